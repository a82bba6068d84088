// Command orders is a modular monolith on busway: four modules (orders,
// billing, shipping, notifications), each in its own package with its own
// SQLite database, talking only through events. Orders are placed through
// an HTTP JSON API; the order row and its OrderPlaced event commit in one
// transaction (the outbox), and each module's effects happen once however
// often an event is delivered (the inbox).
//
// By default the bus is an embedded NATS JetStream server storing in the
// data directory, so events survive a restart with no infrastructure.
// BUS_URL moves it: chan://, nats://127.0.0.1:4222, kafka://host:9092.
//
//	go run ./examples/orders             # serve on 127.0.0.1:8080 until SIGINT/SIGTERM
//	go run ./examples/orders -demo       # place 300 orders, wait, print a summary, exit
//
//	curl -s localhost:8080/orders -d '{"customer":"ada","cents":4200,"card":"4242424242424242"}'
//	curl -s localhost:8080/orders/<id>
//	curl -s localhost:8080/metrics
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/fx"

	"github.com/busway/busway/busfx"
	"github.com/busway/busway/examples/orders/app"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("orders", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o         app.Options
		demo      = fs.Bool("demo", false, "scripted mode: place -n orders through the HTTP API, wait until each reached its final state, print a summary and exit")
		n         = fs.Int("n", 300, "orders to place in -demo mode")
		traceFile = fs.String("trace-stdout", "", "write every span as JSON (the OpenTelemetry stdout exporter) to this file, - for stdout")
		level     = fs.String("log-level", "info", "lowest log level: debug, info, warn, error")
		fxLog     = fs.Bool("fx-log", false, "log fx's own events")
		readyFile = fs.String("ready-file", "", "once serving, write the HTTP address to this file (for scripts)")
	)
	fs.StringVar(&o.DataDir, "data", "orders-data", "directory of the modules' SQLite databases and of the embedded NATS store")
	fs.StringVar(&o.Addr, "addr", "127.0.0.1:8080", "HTTP listen address (-demo: 127.0.0.1:0 unless set)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := o.LogLevel.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("-log-level %q: %w", *level, err)
	}
	o.FxLog = *fxLog
	o.Log = stderr
	addrSet := false
	fs.Visit(func(f *flag.Flag) { addrSet = addrSet || f.Name == "addr" })
	if *demo {
		if !addrSet {
			o.Addr = "127.0.0.1:0"
		}
		// The logs would tear the progress bars apart: to a file.
		fmt.Fprintf(stderr, "logs: %s\n", filepath.Join(o.DataDir, "orders.log"))
		if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
			return err
		}
		lf, err := os.OpenFile(filepath.Join(o.DataDir, "orders.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer lf.Close()
		o.Log = lf
	}
	switch *traceFile {
	case "":
	case "-":
		o.Traces = stdout
	default:
		f, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		defer f.Close()
		o.Traces = f
	}

	o.OTLP = os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""

	var srv *app.Server
	var cfg busfx.Config
	a := app.New(o, fx.Populate(&srv, &cfg))
	if err := a.Err(); err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, a.StartTimeout())
	defer cancel()
	if err := a.Start(startCtx); err != nil {
		return err
	}
	stop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
		defer cancel()
		return a.Stop(ctx)
	}
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte(srv.Addr()), 0o644); err != nil {
			return errors.Join(err, stop())
		}
	}
	if !*demo {
		slog.New(slog.NewJSONHandler(stderr, nil)).Info("orders example up", "addr", "http://"+srv.Addr(), "bus", cfg.Redacted())
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		select {
		case <-sig:
		case <-ctx.Done():
		}
		signal.Stop(sig)
		return stop()
	}
	sum, err := Script{URL: "http://" + srv.Addr(), Orders: *n, Progress: stderr, Timeout: 2 * time.Minute}.Run(ctx)
	if err != nil {
		return errors.Join(err, stop())
	}
	if err := stop(); err != nil {
		return err
	}
	sum.Transport = cfg.Redacted()
	sum.Print(stdout)
	return nil
}
