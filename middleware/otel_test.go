package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

func newTracing(t *testing.T) (*tracetest.SpanRecorder, middleware.TracingOptions) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return rec, middleware.TracingOptions{TracerProvider: tp, Propagator: propagation.TraceContext{}, System: "busway"}
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func checkAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[string]any) {
	t.Helper()
	got := attrs(s)
	for k, v := range want {
		if g, ok := got[attribute.Key(k)]; !ok || fmt.Sprint(g.AsInterface()) != fmt.Sprint(v) {
			t.Errorf("span %q: %s = %v, want %v", s.Name(), k, g.AsInterface(), v)
		}
	}
}

func TestTracingOnChanbus(t *testing.T) {
	rec, opts := newTracing(t)
	tb := newBus(t)
	var handlerSpan trace.SpanContext
	h := middleware.Tracing(opts)(func(ctx context.Context, _ *transport.Message) error {
		handlerSpan = trace.SpanContextFromContext(ctx)
		return nil
	})
	subscribe(t, tb, "orders", "billing", 1, h)
	pub := middleware.PublishTracing(opts)(tb)
	orig := &transport.Message{ID: "o-1", Key: "42", Body: []byte("hello")}
	publish(t, pub, "orders", orig)
	waitFor(t, func() bool { return len(rec.Ended()) == 2 })
	if len(orig.Header) != 0 {
		t.Errorf("PublishTracing modified the caller's message: %v", orig.Header)
	}

	var send, process sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "send orders":
			send = s
		case "process orders":
			process = s
		}
	}
	if send == nil || process == nil {
		t.Fatalf("spans: %v", rec.Ended())
	}
	if send.SpanContext().TraceID() != process.SpanContext().TraceID() {
		t.Fatal("publish and process spans are in different traces")
	}
	if process.Parent().SpanID() != send.SpanContext().SpanID() {
		t.Errorf("process span's parent is %v, want the send span %v", process.Parent().SpanID(), send.SpanContext().SpanID())
	}
	if handlerSpan.SpanID() != process.SpanContext().SpanID() {
		t.Error("handler's ctx does not carry the process span")
	}
	if send.SpanKind() != trace.SpanKindProducer || process.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("kinds %v, %v", send.SpanKind(), process.SpanKind())
	}
	checkAttrs(t, send, map[string]any{
		"messaging.system": "busway", "messaging.operation.type": "send", "messaging.operation.name": "send",
		"messaging.destination.name": "orders", "messaging.message.id": "o-1", "messaging.message.body.size": 5,
	})
	checkAttrs(t, process, map[string]any{
		"messaging.system": "busway", "messaging.operation.type": "process", "messaging.operation.name": "process",
		"messaging.destination.name": "orders", "messaging.message.id": "o-1", "messaging.consumer.group.name": "billing",
		"messaging.message.body.size": 5,
	})
	if process.Status().Code == codes.Error {
		t.Errorf("status %v", process.Status())
	}
}

func TestTracingUnit(t *testing.T) {
	rec, opts := newTracing(t)
	opts.System = "kafka"
	ctx := context.Background()

	// Kafka partition and offset from Meta; error status and error.type.
	m := msg("m1")
	m.Meta = map[string]string{transport.MetaPartition: "3", transport.MetaOffset: "1234"}
	err := middleware.Tracing(opts)(middleware.Retry(tinyRetry(2))(failing(errBoom)))(ctx, m)
	if !errors.Is(err, errBoom) {
		t.Fatal(err)
	}
	s := rec.Ended()[0]
	checkAttrs(t, s, map[string]any{
		"messaging.system": "kafka", "messaging.destination.partition.id": "3", "messaging.kafka.offset": 1234,
		"error.type": "_OTHER", "busway.retry.attempts": 2, // errBoom is a plain errors.New: no class
	})
	if s.Status().Code != codes.Error || len(s.Events()) == 0 {
		t.Errorf("status %v, events %v", s.Status(), s.Events())
	}

	// Dead-lettered: error status, DLQ topic; the DLQ publish is traced too.
	pub := middleware.PublishTracing(opts)(&fakePub{})
	err = middleware.Chain(middleware.Tracing(opts), middleware.DeadLetter(pub, middleware.DeadLetterOptions{}))(failing(errBoom))(ctx, msg("m2"))
	if err != nil {
		t.Fatal(err)
	}
	ended := rec.Ended()
	dlqSend, proc := ended[1], ended[2]
	if dlqSend.Name() != "send orders.dlq" || proc.Name() != "process orders" || dlqSend.Parent().SpanID() != proc.SpanContext().SpanID() {
		t.Fatalf("spans %q (parent %v), %q", dlqSend.Name(), dlqSend.Parent().SpanID(), proc.Name())
	}
	checkAttrs(t, proc, map[string]any{"busway.dead_letter.topic": "orders.dlq"})
	if proc.Status().Code != codes.Error {
		t.Errorf("dead-lettered span status %v", proc.Status())
	}

	// A batch publish: one send span with the batch count, context in every message.
	fp := &fakePub{}
	if err := middleware.PublishTracing(opts)(fp).Publish(ctx, "orders", msg("a"), msg("b")); err != nil {
		t.Fatal(err)
	}
	_, sent := fp.got()
	send := rec.Ended()[5] // after the two create spans
	checkAttrs(t, send, map[string]any{"messaging.batch.message_count": 2})
	for _, m := range sent {
		if m.Header["traceparent"] == "" || m.Header["h"] != "v" {
			t.Errorf("headers %v", m.Header)
		}
	}
	// A failed publish marks the span.
	fp.setFail(transport.ErrUnavailable)
	if err := middleware.PublishTracing(opts)(fp).Publish(ctx, "orders", msg("a")); !errors.Is(err, transport.ErrUnavailable) {
		t.Fatal(err)
	}
	if s := rec.Ended()[6]; s.Status().Code != codes.Error {
		t.Errorf("failed publish span status %v", s.Status())
	}
}

// metricsOf collects the reader's data by instrument name.
func metricsOf(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

func attrVal(s attribute.Set, k string) string {
	v, _ := s.Value(attribute.Key(k))
	return v.String()
}

func TestMetricsOnChanbus(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	mopts := middleware.MetricsOptions{MeterProvider: mp}
	tb := newBus(t)
	pub := middleware.PublishMetrics(mopts)(tb)
	dlq := collect(t, tb, "orders.dlq")

	var handled atomic.Int32
	var failedOnce atomic.Bool
	h := middleware.Chain(
		middleware.Metrics(mopts),
		middleware.DeadLetter(pub, middleware.DeadLetterOptions{}),
		middleware.Idempotent(middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.IdempotentOptions{}),
		middleware.Retry(tinyRetry(2)),
	)(func(_ context.Context, m *transport.Message) error {
		handled.Add(1)
		switch {
		case m.Key == "poison":
			return transport.Permanent(errBoom)
		case m.Key == "flaky" && failedOnce.CompareAndSwap(false, true):
			return errBoom // retried in place, then succeeds
		}
		return nil
	})
	subscribe(t, tb, "orders", "billing", 2, h)
	var msgs []*transport.Message
	for i := 0; i < 5; i++ {
		msgs = append(msgs, &transport.Message{ID: fmt.Sprint("ok-", i), Key: fmt.Sprint(i)})
	}
	msgs = append(msgs,
		&transport.Message{ID: "p-1", Key: "poison"}, &transport.Message{ID: "p-2", Key: "poison"},
		&transport.Message{ID: "f-1", Key: "flaky"},
		&transport.Message{ID: "ok-0", Key: "0"}) // a duplicate
	publish(t, pub, "orders", msgs...)
	waitFor(t, func() bool { return len(dlq.got()) == 2 })
	waitIdle(t, tb)

	data := metricsOf(t, reader)
	consumed := data[middleware.MetricConsumedMessages].(metricdata.Sum[int64])
	byOutcome := map[string]int64{}
	for _, dp := range consumed.DataPoints {
		byOutcome[attrVal(dp.Attributes, "busway.outcome")] += dp.Value
		if attrVal(dp.Attributes, "messaging.destination.name") != "orders" || attrVal(dp.Attributes, "messaging.consumer.group.name") != "billing" ||
			attrVal(dp.Attributes, "messaging.system") != "busway" {
			t.Errorf("attributes %v", dp.Attributes)
		}
		if attrVal(dp.Attributes, "busway.outcome") == "dead_lettered" && attrVal(dp.Attributes, "error.type") == "" {
			t.Errorf("dead-lettered without error.type: %v", dp.Attributes)
		}
	}
	if want := map[string]int64{"success": 6, "dead_lettered": 2, "duplicate": 1}; fmt.Sprint(byOutcome) != fmt.Sprint(want) {
		t.Errorf("consumed by outcome %v, want %v", byOutcome, want)
	}
	hist := data[middleware.MetricProcessDuration].(metricdata.Histogram[float64])
	var count uint64
	for _, dp := range hist.DataPoints {
		count += dp.Count
		if dp.Sum < 0 {
			t.Errorf("negative duration sum %v", dp.Sum)
		}
	}
	if count != 9 {
		t.Errorf("duration histogram count %d, want 9", count)
	}
	if dl := sumInt(data[middleware.MetricDeadLettered]); dl != 2 {
		t.Errorf("dead-lettered %d, want 2", dl)
	}
	if active := sumInt(data[middleware.MetricProcessActive]); active != 0 {
		t.Errorf("active %d, want 0", active)
	}
	// Publish side: 9 to orders, 2 to orders.dlq.
	sent := data[middleware.MetricSentMessages].(metricdata.Sum[int64])
	byTopic := map[string]int64{}
	for _, dp := range sent.DataPoints {
		byTopic[attrVal(dp.Attributes, "messaging.destination.name")] += dp.Value
	}
	if fmt.Sprint(byTopic) != fmt.Sprint(map[string]int64{"orders": 9, "orders.dlq": 2}) {
		t.Errorf("sent %v", byTopic)
	}
	var calls uint64
	for _, dp := range data[middleware.MetricOperationDuration].(metricdata.Histogram[float64]).DataPoints {
		calls += dp.Count
	}
	if calls != 3 { // one batch publish, two dead-letter publishes
		t.Errorf("publish calls %d, want 3", calls)
	}
	if handled.Load() != 5+2+2 { // 5 ok, 2 poison (not retried), flaky twice; duplicate skipped
		t.Errorf("handler calls %d", handled.Load())
	}
}

func sumInt(a metricdata.Aggregation) int64 {
	var n int64
	if s, ok := a.(metricdata.Sum[int64]); ok {
		for _, dp := range s.DataPoints {
			n += dp.Value
		}
	}
	return n
}

func TestPublishMetricsPartialFailure(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	failing := middleware.PublisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
		return &transport.PublishError{Topic: topic, Total: len(msgs),
			Failures: []transport.MessageError{{Index: 1, ID: msgs[1].ID, Err: transport.ErrMessageTooLarge}}}
	})
	_ = middleware.PublishMetrics(middleware.MetricsOptions{MeterProvider: mp, System: "nats"})(failing).
		Publish(context.Background(), "t", msg("a"), msg("b"), msg("c"))
	var ok, failed int64
	for _, dp := range metricsOf(t, reader)[middleware.MetricSentMessages].(metricdata.Sum[int64]).DataPoints {
		if attrVal(dp.Attributes, "error.type") != "" {
			failed += dp.Value
		} else {
			ok += dp.Value
		}
		if attrVal(dp.Attributes, "messaging.system") != "nats" {
			t.Errorf("system %v", dp.Attributes)
		}
	}
	if ok != 2 || failed != 1 {
		t.Fatalf("sent ok %d failed %d, want 2 and 1", ok, failed)
	}
}
