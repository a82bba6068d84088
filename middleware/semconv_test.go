package middleware_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

type Shipment struct {
	ID string `json:"id"`
}

type Unhandled struct{}

// Through a bus, with no System in the options: messaging.system is the
// transport's; each message of a PublishBatch has its own creation context
// (a "create" span the send span links to), and its process span is its
// child and links to it; error.type names the cause's class; a message of
// an unknown type counts as what it is.
func TestSemanticConventionsThroughBus(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	topts := middleware.TracingOptions{TracerProvider: tp, Propagator: propagation.TraceContext{}}
	mopts := middleware.MetricsOptions{MeterProvider: mp}

	ct := chanbus.New(chanbus.WithBackoff(time.Millisecond, time.Millisecond))
	b := bus.New(ct,
		bus.WithMiddleware(middleware.Tracing(topts), middleware.Metrics(mopts)),
		bus.WithPublishMiddleware(middleware.PublishTracing(topts), middleware.PublishMetrics(mopts)))
	if err := bus.Register[Unhandled](b, "Shipment"); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Subscribe(b, "shipping", func(ctx context.Context, e bus.Event[Shipment]) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })

	if err := bus.PublishBatch(t.Context(), b, []Shipment{{ID: "1"}, {ID: "2"}}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(t.Context(), b, Unhandled{}); err != nil {
		t.Fatal(err)
	}
	// A foreign body that does not decode: a permanent *bus.DecodeError.
	if err := ct.Publish(t.Context(), "Shipment", &transport.Message{ID: "bad",
		Header: map[string]string{transport.HeaderType: "Shipment"}, Body: []byte(`{"id":1}`)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.Stats().Failed >= 1 && b.Stats().Handled == 2 && b.Stats().Unknown == 1 })
	if err := ct.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}

	spans := map[string][]sdktrace.ReadOnlySpan{}
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[s.Name()] = append(spans[s.Name()], s)
		byID[s.SpanContext().SpanID()] = s
	}
	creates, sends := spans["create Shipment"], spans["send Shipment"]
	if len(creates) != 2 || len(sends) != 2 {
		t.Fatalf("create spans %d, send spans %d; want 2 (batch) and 2 (batch, single)", len(creates), len(sends))
	}
	for _, s := range append(append([]sdktrace.ReadOnlySpan(nil), creates...), sends...) {
		checkAttrs(t, s, map[string]any{"messaging.system": "chanbus"})
	}
	batchSend := sends[0]
	if len(batchSend.Links()) != 2 {
		t.Errorf("batch send span links %v, want its 2 create spans", batchSend.Links())
	}
	created := map[string]trace.SpanID{} // message ID -> its create span
	for _, c := range creates {
		checkAttrs(t, c, map[string]any{"messaging.operation.type": "create"})
		created[attrs(c)["messaging.message.id"].AsString()] = c.SpanContext().SpanID()
	}
	var processed int
	for _, p := range spans["process Shipment"] {
		checkAttrs(t, p, map[string]any{"messaging.system": "chanbus"})
		id := attrs(p)["messaging.message.id"].AsString()
		links := p.Links()
		switch ev := attrs(p)["busway.outcome"].AsString(); {
		case id == "bad":
			checkAttrs(t, p, map[string]any{"error.type": "*bus.DecodeError"})
			if len(links) != 0 {
				t.Errorf("process span of a message without trace context has links %v", links)
			}
			continue
		case ev == "unknown_type":
			continue
		}
		cs, ok := created[id]
		if !ok {
			t.Errorf("process span of message %q, which has no create span", id)
			continue
		}
		processed++
		if p.Parent().SpanID() != cs || len(links) != 1 || links[0].SpanContext.SpanID() != cs {
			t.Errorf("process span of %q: parent %v, links %v; want both its create span %v", id, p.Parent().SpanID(), links, cs)
		}
	}
	if processed != 2 {
		t.Errorf("%d process spans of the batch, want 2", processed)
	}

	// Metrics: by outcome, with messaging.system, unknown types as such.
	outcomes := map[string]int64{}
	for _, dp := range metricsOf(t, reader)[middleware.MetricConsumedMessages].(metricdata.Sum[int64]).DataPoints {
		if sys := attrVal(dp.Attributes, "messaging.system"); sys != "chanbus" {
			t.Errorf("consumed messages with messaging.system %q", sys)
		}
		key := attrVal(dp.Attributes, "busway.outcome")
		if et := attrVal(dp.Attributes, "error.type"); et != "" {
			key += " " + et
		}
		outcomes[key] += dp.Value
	}
	if outcomes["success"] != 2 || outcomes["unknown_type"] != 1 || outcomes["error *bus.DecodeError"] < 1 {
		t.Errorf("consumed by outcome %v, want 2 success, 1 unknown_type, a *bus.DecodeError error", outcomes)
	}
}

// error.type is the class of the cause, beneath Permanent and fmt wrapping.
func TestErrorType(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("x"), "_OTHER"},
		{transport.Permanent(&bus.DecodeError{Err: errors.New("x")}), "*bus.DecodeError"},
		{transport.Permanent(errors.New("x")), "_OTHER"},
		{errors.Join(context.DeadlineExceeded, errors.New("y")), "context.DeadlineExceeded"},
		{transport.Permanent(errors.Join(transport.ErrUnavailable)), "transport.ErrUnavailable"},
		{&transport.PanicError{Value: "boom"}, "*transport.PanicError"},
	} {
		if got := transport.ErrorType(c.err); got != c.want {
			t.Errorf("ErrorType(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// A panic that goes through Metrics (no Recover inside, no bus) counts as a
// failed message with the class of the error it becomes, and leaves
// nothing in flight.
func TestMetricsCountsPanics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	h := middleware.Metrics(middleware.MetricsOptions{MeterProvider: mp})(func(context.Context, *transport.Message) error {
		panic("boom")
	})
	m := &transport.Message{ID: "p1", Topic: "orders", Group: "billing"}
	var pe *transport.PanicError
	if err := transport.CallHandler(t.Context(), nil, h, m); !errors.As(err, &pe) {
		t.Fatalf("CallHandler: %v, want a *transport.PanicError", err)
	}
	data := metricsOf(t, reader)
	dps := data[middleware.MetricConsumedMessages].(metricdata.Sum[int64]).DataPoints
	if len(dps) != 1 || dps[0].Value != 1 || attrVal(dps[0].Attributes, "busway.outcome") != "error" ||
		attrVal(dps[0].Attributes, "error.type") != "*transport.PanicError" {
		t.Errorf("consumed after a panic: %+v", dps)
	}
	for _, dp := range data[middleware.MetricProcessActive].(metricdata.Sum[int64]).DataPoints {
		if dp.Value != 0 {
			t.Errorf("%d messages still in flight after the panic", dp.Value)
		}
	}
}
