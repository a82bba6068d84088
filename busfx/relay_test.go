package busfx

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	_ "modernc.org/sqlite"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/outbox"
)

// TestRelay: the relay of an outbox in the app delivers committed rows
// through the Module's transport to handlers, and stops after the
// handlers drained, before the transport closes and before its database
// closes.
func TestRelay(t *testing.T) {
	j := &journal{}
	closing := make(chan struct{})
	got := make(chan string, 10)
	var ob *outbox.Outbox
	var once sync.Once
	testHookRelayStopped = func() { once.Do(func() { j.add("relay stopped") }) }
	t.Cleanup(func() { testHookRelayStopped = nil })
	app := fxtest.New(t,
		Module,
		fx.Replace(Config{URL: "rec://"}),
		fx.Supply(recMux(j, closing)),
		fx.Provide(func(lc fx.Lifecycle, b *bus.Bus) (*outbox.Outbox, error) {
			db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "app.db")+"?_pragma=busy_timeout(5000)")
			if err != nil {
				return nil, err
			}
			ob, err := outbox.New(db, outbox.Options{Dialect: outbox.SQLite, Bus: b})
			if err != nil {
				return nil, err
			}
			lc.Append(fx.Hook{
				OnStart: ob.Migrate,
				OnStop: func(context.Context) error {
					j.add("db closed")
					return db.Close()
				},
			})
			return ob, nil
		}),
		Relay(outbox.RelayOptions{}),
		SubscribeFunc("billing", func(ctx context.Context, e bus.Event[OrderPlaced]) error {
			got <- e.Data.ID
			return nil
		}),
		fx.Populate(&ob),
	)
	app.RequireStart()
	err := ob.Transact(t.Context(), func(tx *sql.Tx) error {
		return outbox.Publish(t.Context(), ob, tx, OrderPlaced{ID: "42"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if id := <-got; id != "42" {
		t.Fatalf("handled %q", id)
	}
	app.RequireStop()
	g := j.list()
	want := []string{"subscription closed", "relay stopped", "transport close", "db closed"}
	var seen []string
	for _, e := range g {
		if slices.Contains(want, e) {
			seen = append(seen, e)
		}
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("stop order %q, want %q", g, want)
	}
}

// TestRelayOptionServesSeveralApps: one Relay option value (a module's
// package variable) used by two apps gives each relay its own app's
// MeterProvider.
func TestRelayOptionServesSeveralApps(t *testing.T) {
	opt := Relay(outbox.RelayOptions{})
	for i := range 2 {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		got := make(chan string, 1)
		var ob *outbox.Outbox
		app := fxtest.New(t,
			Module,
			fx.Replace(Config{URL: "chan://"}),
			fx.Supply(fx.Annotate(mp, fx.As(new(metric.MeterProvider)))),
			fx.Provide(func(lc fx.Lifecycle, b *bus.Bus) (*outbox.Outbox, error) {
				db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "app.db")+"?_pragma=busy_timeout(5000)")
				if err != nil {
					return nil, err
				}
				ob, err := outbox.New(db, outbox.Options{Dialect: outbox.SQLite, Bus: b})
				lc.Append(fx.Hook{OnStart: ob.Migrate, OnStop: func(context.Context) error { return db.Close() }})
				return ob, err
			}),
			opt,
			SubscribeFunc("g", func(ctx context.Context, e bus.Event[OrderPlaced]) error { got <- e.Data.ID; return nil }),
			fx.Populate(&ob),
		)
		app.RequireStart()
		if err := ob.Transact(t.Context(), func(tx *sql.Tx) error {
			return outbox.Publish(t.Context(), ob, tx, OrderPlaced{ID: "1"})
		}); err != nil {
			t.Fatal(err)
		}
		<-got
		app.RequireStop() // the relay has counted the row by now
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				found = found || m.Name == outbox.MetricPublished
			}
		}
		if !found {
			t.Errorf("app %d: its MeterProvider has no %s: %+v", i, outbox.MetricPublished, rm.ScopeMetrics)
		}
	}
}
