package outbox

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

// TestTraceContextCarried: the trace context of the writer's Publish
// reaches the consumer unchanged through the relay, and the relay's own
// "send <topic>" span links to it.
func TestTraceContextCarried(t *testing.T) {
	ctx := context.Background()
	e := newSQLite(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(ctx)
	prop := propagation.TraceContext{}
	b, tr := newBus(t)
	o, err := New(e.db, Options{Dialect: e.dialect, Bus: b, Table: e.table, InboxTable: e.inbox, Propagator: prop})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	var mu sync.Mutex
	var got []trace.SpanContext
	if _, err := bus.Subscribe(b, "billing", func(context.Context, bus.Event[OrderPlaced]) error { return nil },
		bus.WithGroupMiddleware(func(next transport.Handler) transport.Handler {
			return func(ctx context.Context, m *transport.Message) error {
				mu.Lock()
				got = append(got, trace.SpanContextFromContext(prop.Extract(ctx, propagation.MapCarrier(m.Header))))
				mu.Unlock()
				return next(ctx, m)
			}
		})); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, writeSpan := tp.Tracer("test").Start(ctx, "place order")
	if err := o.Transact(wctx, func(tx *sql.Tx) error { return Publish(wctx, o, tx, OrderPlaced{ID: "1"}) }); err != nil {
		t.Fatal(err)
	}
	writeSpan.End()
	startRelay(t, o, tr, RelayOptions{TracerProvider: tp})
	waitFor(t, "the event", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	want := writeSpan.SpanContext()
	mu.Lock()
	if got[0].TraceID() != want.TraceID() || got[0].SpanID() != want.SpanID() {
		t.Errorf("the consumer got trace context %v/%v, want the writer's %v/%v", got[0].TraceID(), got[0].SpanID(), want.TraceID(), want.SpanID())
	}
	mu.Unlock()
	waitFor(t, "the relay's send span", 10*time.Second, func() bool {
		for _, s := range rec.Ended() {
			if s.Name() == "send orders" {
				return true
			}
		}
		return false
	})
	for _, s := range rec.Ended() {
		if s.Name() != "send orders" {
			continue
		}
		if s.SpanKind() != trace.SpanKindProducer {
			t.Errorf("send span kind %v, want producer", s.SpanKind())
		}
		if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != want.SpanID() {
			t.Errorf("send span links %+v, want one to the writer's span %v", s.Links(), want.SpanID())
		}
	}
}
