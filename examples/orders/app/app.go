// Package app assembles the orders example: the observability the program
// owns (slog JSON logs, OpenTelemetry traces, Prometheus metrics), the
// busway bus (busfx), the four modules and the HTTP server.
package app

import (
	"context"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"

	"github.com/busway/busway/busfx"
	"github.com/busway/busway/examples/orders/billing"
	"github.com/busway/busway/examples/orders/events"
	"github.com/busway/busway/examples/orders/notifications"
	"github.com/busway/busway/examples/orders/orders"
	"github.com/busway/busway/examples/orders/platform"
	"github.com/busway/busway/examples/orders/shipping"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// Options configure the app. The zero value means the defaults.
type Options struct {
	// DataDir holds the modules' SQLite databases and, by default, the
	// embedded NATS server's store. Default "orders-data".
	DataDir string
	// Addr is the HTTP listen address. Default "127.0.0.1:8080"; ":0" or
	// "127.0.0.1:0" pick a free port (Server.Addr says which).
	Addr string
	// BusURL overrides BUS_URL. When both are empty the bus runs on an
	// embedded NATS JetStream server with its data in DataDir/nats.
	BusURL string
	// Log receives the JSON logs. Default os.Stderr.
	Log io.Writer
	// LogLevel is the lowest level logged. Default Info.
	LogLevel slog.Level
	// Traces, when set, receives every span as JSON (the OpenTelemetry
	// stdout exporter). Default: spans are made and propagated, not
	// exported.
	Traces io.Writer
	// OTLP, when set, also exports every span by OTLP over HTTP, to where
	// the standard OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT)
	// variable says; main sets it when one of those is set.
	OTLP bool
	// FxLog logs fx's own events (provides, hooks) to Log.
	FxLog bool
}

// DefaultURL is the bus URL for a data directory when neither BUS_URL nor
// Options.BusURL is set: an embedded JetStream server storing under it.
func DefaultURL(dataDir string) string {
	dir := strings.ReplaceAll(url.QueryEscape(filepath.Join(dataDir, "nats")), "%2F", "/")
	return "nats://embedded?store_dir=" + dir
}

// New returns the app, not started.
func New(o Options, extra ...fx.Option) *fx.App {
	if o.DataDir == "" {
		o.DataDir = "orders-data"
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:8080"
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	logger := slog.New(slog.NewJSONHandler(o.Log, &slog.HandlerOptions{Level: o.LogLevel}))
	fxLog := fx.NopLogger
	if o.FxLog {
		fxLog = fx.WithLogger(func() fxevent.Logger { return &fxevent.SlogLogger{Logger: logger} })
	}
	opts := []fx.Option{
		fxLog,
		fx.StopTimeout(30 * time.Second),
		fx.Supply(o, platform.Config{DataDir: o.DataDir}, logger),
		fx.Provide(newTelemetry, newMiddleware, func() platform.Routes { return platform.Routes{ServeMux: http.NewServeMux()} }),
		fx.Invoke(func() error { return os.MkdirAll(o.DataDir, 0o755) }),

		busfx.Module,
		fx.Decorate(func(c busfx.Config) busfx.Config {
			switch {
			case o.BusURL != "":
				c.URL = o.BusURL
			case c.URL == "":
				c.URL = DefaultURL(o.DataDir)
			}
			if c.Source == "" {
				c.Source = "orders-example"
			}
			return c
		}),
		events.Module,
		orders.Module,
		billing.Module,
		shipping.Module,
		notifications.Module,

		// Last, so that the server starts after the bus and stops before
		// it: no request publishes into a bus that is shutting down.
		fx.Provide(newServer),
		fx.Invoke(func(*Server) {}),
	}
	return fx.New(append(opts, extra...)...)
}

// telemetryOut is what newTelemetry provides: the app owns these (busfx
// provides none of them).
type telemetryOut struct {
	fx.Out
	Telemetry platform.Telemetry
	Tracer    trace.TracerProvider
	Meter     metric.MeterProvider
	Registry  *prometheus.Registry
}

func newTelemetry(lc fx.Lifecycle, o Options, logger *slog.Logger) (telemetryOut, error) {
	res := resource.NewSchemaless(semconv.ServiceName("orders-example"))
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if o.Traces != nil {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(o.Traces))
		if err != nil {
			return telemetryOut{}, err
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
	}
	if o.OTLP {
		// Configured by the standard OTEL_EXPORTER_OTLP_* variables.
		exp, err := otlptracehttp.New(context.Background())
		if err != nil {
			return telemetryOut{}, fmt.Errorf("OTLP trace exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(topts...)

	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return telemetryOut{}, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	lc.Append(fx.Hook{OnStop: func(ctx context.Context) error {
		return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx)) // flushes the spans
	}})
	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	return telemetryOut{
		Telemetry: platform.Telemetry{Logger: logger, Tracer: tp, Propagator: prop},
		Tracer:    tp, Meter: mp, Registry: reg,
	}, nil
}

// newMiddleware is the bus's consume-side chain, in the recommended order
// (see package middleware). The inbox is not in it: each module's handlers
// run in their own database's inbox transaction (outbox.Handler).
func newMiddleware(t transport.Transport, tel platform.Telemetry, mp metric.MeterProvider) busfx.Middleware {
	return busfx.Middleware{
		middleware.Tracing(middleware.TracingOptions{TracerProvider: tel.Tracer, Propagator: tel.Propagator}),
		middleware.Metrics(middleware.MetricsOptions{MeterProvider: mp}),
		middleware.Logging(tel.Logger, middleware.LoggingOptions{}),
		middleware.DeadLetter(t, middleware.DeadLetterOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 5, InitialInterval: 10 * time.Millisecond, MaxInterval: 200 * time.Millisecond}),
		middleware.Timeout(10 * time.Second),
		middleware.Recover(),
	}
}

// Server is the HTTP server: the modules' routes, /metrics and /healthz.
type Server struct {
	srv  *http.Server
	addr string
	done chan error
}

// Addr is the address the server listens on, once started.
func (s *Server) Addr() string { return s.addr }

func newServer(lc fx.Lifecycle, o Options, reg *prometheus.Registry, logger *slog.Logger, r platform.Routes) *Server {
	r.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	r.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	s := &Server{srv: &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}, done: make(chan error, 1)}
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			ln, err := net.Listen("tcp", o.Addr)
			if err != nil {
				return fmt.Errorf("http: %w", err)
			}
			s.addr = ln.Addr().String()
			go func() { s.done <- s.srv.Serve(ln) }()
			logger.Info("serving", "addr", "http://"+s.addr)
			return nil
		},
		OnStop: func(ctx context.Context) error {
			err := s.srv.Shutdown(ctx)
			if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) {
				err = errors.Join(err, serr)
			}
			return err
		},
	})
	return s
}
