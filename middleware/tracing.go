package middleware

import (
	"context"
	"errors"
	"maps"
	"strconv"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/busway/busway/transport"
)

// instrumentationName names the tracer and meter of this package.
const instrumentationName = "github.com/busway/busway/middleware"

// DefaultSystem is the messaging.system attribute when the options give none.
const DefaultSystem = "busway"

// Attribute keys of busway's own, beside the semantic conventions.
const (
	// AttrOutcome is the outcome of processing (an Outcome value) on
	// metrics.
	AttrOutcome = attribute.Key("busway.outcome")
	// AttrDeadLetterTopic is the dead-letter topic on a process span whose
	// message was dead-lettered.
	AttrDeadLetterTopic = attribute.Key("busway.dead_letter.topic")
	// AttrDuplicate is true on a process span whose message Idempotent
	// skipped.
	AttrDuplicate = attribute.Key("busway.duplicate")
	// AttrRetryAttempts is the number of handler calls on a failed or
	// dead-lettered process span.
	AttrRetryAttempts = attribute.Key("busway.retry.attempts")
)

// TracingOptions configure Tracing and PublishTracing. The zero value means
// the defaults.
type TracingOptions struct {
	// TracerProvider makes the tracer. Default otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// Propagator injects the trace context into Message.Header on publish
	// and extracts it on consume. Default otel.GetTextMapPropagator(),
	// which propagates nothing until the program sets one (e.g.
	// propagation.TraceContext{}): set one here or globally.
	Propagator propagation.TextMapPropagator
	// System is the messaging.system attribute, e.g. "kafka", "nats".
	// Default DefaultSystem ("busway").
	System string
}

type tracer struct {
	t      trace.Tracer
	prop   propagation.TextMapPropagator
	system attribute.KeyValue
}

func newTracer(o TracingOptions) tracer {
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	prop := o.Propagator
	if prop == nil {
		prop = otel.GetTextMapPropagator()
	}
	sys := o.System
	if sys == "" {
		sys = DefaultSystem
	}
	return tracer{t: tp.Tracer(instrumentationName), prop: prop, system: semconv.MessagingSystemKey.String(sys)}
}

// Tracing starts a consumer span "process <topic>" per handler call,
// following the OpenTelemetry messaging semantic conventions: the trace
// context extracted from Message.Header (put there by PublishTracing) is the
// parent, so one trace runs from producer to consumer. Attributes:
// messaging.system, messaging.operation.type "process",
// messaging.operation.name, messaging.destination.name,
// messaging.consumer.group.name, messaging.message.id,
// messaging.message.body.size, and what the transport put in Message.Meta
// (Kafka partition and offset, NATS stream sequence). A failure sets the
// span status to Error, records the error and its error.type; a
// dead-lettered message also gets AttrDeadLetterTopic.
//
// Place it outermost, so the span covers every attempt, the dead-lettering
// and the idempotency lookup, and inner middleware and the handler see the
// span in ctx.
func Tracing(opts TracingOptions) Middleware {
	tr := newTracer(opts)
	kind := trace.WithSpanKind(trace.SpanKindConsumer)
	var names attrCache[string, string]
	name := func(topic string) string { return "process " + topic }
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			ctx = tr.prop.Extract(ctx, propagation.MapCarrier(m.Header))
			attrs := make([]attribute.KeyValue, 0, 8+len(m.Meta))
			attrs = append(attrs,
				tr.system,
				semconv.MessagingOperationTypeProcess,
				semconv.MessagingOperationName("process"),
				semconv.MessagingDestinationName(m.Topic),
				semconv.MessagingConsumerGroupName(m.Group),
				semconv.MessagingMessageBodySize(len(m.Body)),
			)
			if m.ID != "" {
				attrs = append(attrs, semconv.MessagingMessageID(m.ID))
			}
			attrs = appendMeta(attrs, m.Meta)
			ctx, span := tr.t.Start(ctx, names.get(m.Topic, name), kind, trace.WithAttributes(attrs...))
			defer span.End()
			var r *report
			if span.IsRecording() {
				ctx, r = withReport(ctx)
			}
			err := next(ctx, m)
			switch {
			case err != nil:
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
				span.SetAttributes(semconv.ErrorType(errType(err)), AttrRetryAttempts.Int(Attempts(err)))
			case r != nil && r.deadLettered:
				span.RecordError(r.err)
				span.SetStatus(codes.Error, "dead-lettered: "+r.err.Error())
				span.SetAttributes(semconv.ErrorType(errType(r.err)), AttrDeadLetterTopic.String(r.dlqTopic),
					AttrRetryAttempts.Int(r.attempts))
			case r != nil && r.duplicate:
				span.SetAttributes(AttrDuplicate.Bool(true))
			}
			return err
		}
	}
}

// errType is the error whose type names error.type: the handler's error
// beneath the middleware's wrappers.
func errType(err error) error {
	for {
		var re *RetryError
		if !errors.As(err, &re) || re.Err == nil {
			return err
		}
		err = re.Err
	}
}

func appendMeta(attrs []attribute.KeyValue, meta map[string]string) []attribute.KeyValue {
	for k, v := range meta {
		switch k {
		case transport.MetaOffset, transport.MetaSequence:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				attrs = append(attrs, attribute.Int64(k, n))
				continue
			}
		}
		attrs = append(attrs, attribute.String(k, v))
	}
	return attrs
}

// PublishTracing wraps a Publisher: each Publish call gets a producer span
// "send <topic>" with messaging.system, messaging.operation.type "send",
// messaging.destination.name and messaging.message.id (or
// messaging.batch.message_count for a batch), and the span's context is
// injected into every message's Header (W3C traceparent with the default
// propagator) for Tracing to extract on the consumer side. The caller's
// messages are not modified: the wrapper passes copies with their own
// Header maps.
func PublishTracing(opts TracingOptions) PublisherMiddleware {
	tr := newTracer(opts)
	return func(next transport.Publisher) transport.Publisher {
		return PublisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
			attrs := []attribute.KeyValue{
				tr.system,
				semconv.MessagingOperationTypeSend,
				semconv.MessagingOperationName("send"),
				semconv.MessagingDestinationName(topic),
			}
			if len(msgs) == 1 && msgs[0] != nil {
				if msgs[0].ID != "" {
					attrs = append(attrs, semconv.MessagingMessageID(msgs[0].ID))
				}
				attrs = append(attrs, semconv.MessagingMessageBodySize(len(msgs[0].Body)))
			} else {
				attrs = append(attrs, semconv.MessagingBatchMessageCount(len(msgs)))
			}
			ctx, span := tr.t.Start(ctx, "send "+topic,
				trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
			defer span.End()
			out := make([]*transport.Message, len(msgs))
			for i, m := range msgs {
				if m == nil { // the transport rejects it with a clear error
					continue
				}
				c := *m
				c.Header = make(map[string]string, len(m.Header)+2)
				maps.Copy(c.Header, m.Header)
				tr.prop.Inject(ctx, propagation.MapCarrier(c.Header))
				out[i] = &c
			}
			err := next.Publish(ctx, topic, out...)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
				span.SetAttributes(semconv.ErrorType(err))
			}
			return err
		})
	}
}
