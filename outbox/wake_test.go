package outbox

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// An hour-long poll interval: delivery within the test's deadline proves a
// wake-up.
const noPoll = time.Hour

// TestWakeLocal: Transact wakes a relay of the same process directly.
func TestWakeLocal(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		s := subscribe(t, b)
		r := startRelay(t, o, tr, RelayOptions{PollInterval: noPoll, LeaseTTL: 2 * noPoll})
		waitFor(t, "the relay to lead", 10*time.Second, func() bool { return r.Stats().Leader })
		for i := range 3 {
			if err := o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: string(rune('a' + i))}) }); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the event, woken locally", 10*time.Second, func() bool { return s.distinct() == i+1 })
		}
	})
}

// TestMetrics: the relay reports published, failed, pending and the
// oldest pending age through the OTel metric API.
func TestMetrics(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		s := subscribe(t, b)
		reader := metric.NewManualReader()
		mp := metric.NewMeterProvider(metric.WithReader(reader))
		defer mp.Shutdown(ctx)
		f := &flaky{next: tr}
		f.down.Store(true)
		r := startRelay(t, o, f, RelayOptions{MeterProvider: mp, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
		for i := range 4 {
			if err := o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: string(rune('a' + i))}) }); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "failures", 10*time.Second, func() bool { return r.Stats().Failed >= 4 })
		collect := func() map[string]float64 {
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(ctx, &rm); err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					switch d := m.Data.(type) {
					case metricdata.Sum[int64]:
						for _, p := range d.DataPoints {
							got[m.Name] += float64(p.Value)
						}
					case metricdata.Gauge[int64]:
						for _, p := range d.DataPoints {
							got[m.Name] = float64(p.Value)
						}
					case metricdata.Gauge[float64]:
						for _, p := range d.DataPoints {
							got[m.Name] = p.Value
						}
					}
				}
			}
			return got
		}
		got := collect()
		if got[MetricPending] != 4 || got[MetricFailed] < 4 {
			t.Fatalf("during the outage: %v", got)
		}
		if _, ok := got[MetricOldestAge]; !ok {
			t.Fatalf("no %s: %v", MetricOldestAge, got)
		}
		f.down.Store(false)
		waitFor(t, "delivery", 10*time.Second, func() bool { return s.distinct() == 4 })
		waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
		// The counter follows the delete.
		waitFor(t, "the published counter", 10*time.Second, func() bool { return collect()[MetricPublished] == 4 })
		got = collect()
		if got[MetricPublished] != 4 || got[MetricPending] != 0 || got[MetricOldestAge] != 0 {
			t.Fatalf("after the outage: %v", got)
		}
	})
}
