package middleware

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/busway/busway/transport"
)

// Metric names. Those of the OpenTelemetry messaging semantic conventions
// where one exists; busway's own otherwise.
const (
	// MetricProcessDuration: histogram of handler chain duration, seconds.
	MetricProcessDuration = "messaging.process.duration"
	// MetricConsumedMessages: counter of messages processed, with
	// AttrOutcome and, on failure, error.type.
	MetricConsumedMessages = "messaging.client.consumed.messages"
	// MetricProcessActive: up-down counter of messages being processed.
	MetricProcessActive = "busway.messaging.process.active"
	// MetricDeadLettered: counter of messages DeadLetter published to a
	// dead-letter topic.
	MetricDeadLettered = "busway.messaging.dead_lettered.messages"
	// MetricSentMessages: counter of messages published, with error.type
	// on failure.
	MetricSentMessages = "messaging.client.sent.messages"
	// MetricOperationDuration: histogram of Publish call duration, seconds.
	MetricOperationDuration = "messaging.client.operation.duration"
)

// durationBuckets are the semantic conventions' advised histogram buckets
// for messaging durations, in seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// MetricsOptions configure Metrics and PublishMetrics. The zero value means
// the defaults.
type MetricsOptions struct {
	// MeterProvider makes the meter. Default otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// System is the messaging.system attribute. Default: the transport's,
	// from the context (see DefaultSystem), else DefaultSystem.
	System string
}

func (o MetricsOptions) meter() metric.Meter {
	mp := o.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(instrumentationName)
}

// Metrics records, through the OpenTelemetry metric API (exportable to
// Prometheus by the OTel Prometheus exporter), per message: its processing
// duration (MetricProcessDuration), a count by outcome
// (MetricConsumedMessages with AttrOutcome "success", "error",
// "dead_lettered", "duplicate" or "unknown_type" (acknowledged by the bus
// without a handler: bus.Stats.Unknown), and on failure error.type, the
// class of the cause: transport.ErrorType), the number in flight
// (MetricProcessActive) and the number dead-lettered (MetricDeadLettered).
// A handler panic that reaches Metrics counts as an error with error.type
// "*transport.PanicError" before it goes on (a bus.Bus recovers its
// handlers' panics into that error first). Every instrument carries
// messaging.system (MetricsOptions.System, else the transport's),
// messaging.destination.name, messaging.consumer.group.name and
// messaging.operation.name "process".
//
// Place it just inside Tracing, outside DeadLetter and Idempotent, so it
// sees their outcome (a dead-lettered or duplicate message returns nil) and
// times the whole delivery, retries included.
func Metrics(opts MetricsOptions) Middleware {
	meter := opts.meter()
	// Instrument errors come only from invalid names or options, which are
	// constants here; the API returns usable no-op instruments with them.
	dur, _ := meter.Float64Histogram(MetricProcessDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of processing a message, retries included."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	consumed, _ := meter.Int64Counter(MetricConsumedMessages, metric.WithUnit("{message}"),
		metric.WithDescription("Messages processed, by outcome."))
	active, _ := meter.Int64UpDownCounter(MetricProcessActive, metric.WithUnit("{message}"),
		metric.WithDescription("Messages being processed."))
	dlq, _ := meter.Int64Counter(MetricDeadLettered, metric.WithUnit("{message}"),
		metric.WithDescription("Messages published to a dead-letter topic."))
	var cache attrCache[procKey, *procAttrs]
	build := func(k procKey) *procAttrs {
		return newProcAttrs([]attribute.KeyValue{semconv.MessagingSystemKey.String(k.system), semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(k.topic), semconv.MessagingConsumerGroupName(k.group)})
	}
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			a := cache.get(procKey{systemOf(opts.System, ctx), m.Topic, m.Group}, build)
			active.Add(ctx, 1, a.plain...)
			ctx, r := withReport(ctx)
			start := time.Now()
			returned := false
			defer func() {
				if returned {
					return
				}
				// A panic goes through (to a Recover or the transport's
				// CallHandler): count it as the failure it is.
				active.Add(ctx, -1, a.plain...)
				opt := a.with(AttrOutcome.String(string(OutcomeError)), semconv.ErrorTypeKey.String(panicErrorType))
				dur.Record(ctx, time.Since(start).Seconds(), opt)
				consumed.Add(ctx, 1, opt)
			}()
			err := next(ctx, m)
			returned = true
			elapsed := time.Since(start).Seconds()
			active.Add(ctx, -1, a.plain...)
			switch out := r.outcome(err); out {
			case OutcomeSuccess:
				dur.Record(ctx, elapsed, a.successRec...)
				consumed.Add(ctx, 1, a.success...)
			case OutcomeDuplicate:
				dur.Record(ctx, elapsed, a.duplicateRec...)
				consumed.Add(ctx, 1, a.duplicate...)
			case OutcomeUnknownType:
				opt := a.with(AttrOutcome.String(string(out)))
				dur.Record(ctx, elapsed, opt)
				consumed.Add(ctx, 1, opt)
			default:
				cause := err
				if out == OutcomeDeadLettered {
					dlq.Add(ctx, 1, a.plain...)
					cause = r.err
				}
				opt := a.with(AttrOutcome.String(string(out)), errorTypeAttr(cause))
				dur.Record(ctx, elapsed, opt)
				consumed.Add(ctx, 1, opt)
			}
			return err
		}
	}
}

// panicErrorType is the error.type of a panic: that of the
// *transport.PanicError it becomes.
var panicErrorType = transport.ErrorType(&transport.PanicError{})

// systemOf is the messaging.system of a measurement.
func systemOf(fixed string, ctx context.Context) string {
	if fixed == "" {
		if fixed = transport.SystemFromContext(ctx); fixed == "" {
			fixed = DefaultSystem
		}
	}
	return fixed
}

type procKey struct{ system, topic, group string }

// procAttrs are the attribute sets of one (topic, group), or of one topic
// for PublishMetrics, built once, with the option slices the instruments
// take: an attribute set costs a sort and allocations per measurement
// otherwise, and a variadic argument list one more.
type procAttrs struct {
	base                      []attribute.KeyValue
	plain, success, duplicate []metric.AddOption
	plainRec                  []metric.RecordOption
	successRec, duplicateRec  []metric.RecordOption
}

func newProcAttrs(base []attribute.KeyValue) *procAttrs {
	a := &procAttrs{base: base}
	success, duplicate := a.with(AttrOutcome.String(string(OutcomeSuccess))), a.with(AttrOutcome.String(string(OutcomeDuplicate)))
	plain := a.with()
	a.plain, a.plainRec = []metric.AddOption{plain}, []metric.RecordOption{plain}
	a.success, a.duplicate = []metric.AddOption{success}, []metric.AddOption{duplicate}
	a.successRec, a.duplicateRec = []metric.RecordOption{success}, []metric.RecordOption{duplicate}
	return a
}

func (a *procAttrs) with(kv ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(append(kv, a.base...)...))
}

// maxCached bounds an attrCache; beyond it values are built per use, so a
// program with unbounded topic names cannot grow memory without bound.
const maxCached = 1024

// attrCache memoizes per-key attribute values. Safe for concurrent use.
type attrCache[K comparable, V any] struct {
	m sync.Map // K -> V
	n atomic.Int32
}

func (c *attrCache[K, V]) get(k K, build func(K) V) V {
	if v, ok := c.m.Load(k); ok {
		return v.(V)
	}
	v := build(k)
	if c.n.Load() < maxCached {
		if _, loaded := c.m.LoadOrStore(k, v); !loaded {
			c.n.Add(1)
		}
	}
	return v
}

// PublishMetrics wraps a Publisher: it counts messages published
// (MetricSentMessages, error.type on those that failed; a *PublishError's
// accepted messages count as sent) and records each Publish call's duration
// (MetricOperationDuration), with messaging.system,
// messaging.destination.name, messaging.operation.name "send" and
// messaging.operation.type "send".
func PublishMetrics(opts MetricsOptions) PublisherMiddleware {
	meter := opts.meter()
	sent, _ := meter.Int64Counter(MetricSentMessages, metric.WithUnit("{message}"),
		metric.WithDescription("Messages published."))
	dur, _ := meter.Float64Histogram(MetricOperationDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of publish calls."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	var cache attrCache[procKey, *procAttrs]
	build := func(k procKey) *procAttrs {
		return newProcAttrs([]attribute.KeyValue{semconv.MessagingSystemKey.String(k.system), semconv.MessagingOperationName("send"),
			semconv.MessagingOperationTypeSend, semconv.MessagingDestinationName(k.topic)})
	}
	return func(next transport.Publisher) transport.Publisher {
		return PublisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
			a := cache.get(procKey{system: systemOf(opts.System, ctx), topic: topic}, build)
			start := time.Now()
			err := next.Publish(ctx, topic, msgs...)
			elapsed := time.Since(start).Seconds()
			if err == nil {
				dur.Record(ctx, elapsed, a.plainRec...)
				sent.Add(ctx, int64(len(msgs)), a.plain...)
				return nil
			}
			et := a.with(errorTypeAttr(err))
			dur.Record(ctx, elapsed, et)
			failed := len(msgs)
			var pe *transport.PublishError
			if errors.As(err, &pe) && len(pe.Failures) <= len(msgs) {
				failed = len(pe.Failures)
			}
			if ok := len(msgs) - failed; ok > 0 {
				sent.Add(ctx, int64(ok), a.plain...)
			}
			if failed > 0 {
				sent.Add(ctx, int64(failed), et)
			}
			return err
		})
	}
}
