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

// DefaultSystem is the messaging.system attribute when neither the options
// nor the context name one: middleware used with a bus.Bus report its
// transport's system ("nats", "kafka", "chanbus": transport.SystemOf,
// passed in the context with transport.ContextWithSystem).
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
	// Default: the transport's, from the context (see DefaultSystem), else
	// DefaultSystem ("busway").
	System string
}

type tracer struct {
	t      trace.Tracer
	prop   propagation.TextMapPropagator
	system string // fixed by the options, or ""
}

// systemAttr is messaging.system for a call with ctx.
func systemAttr(fixed string, ctx context.Context) attribute.KeyValue {
	if fixed == "" {
		if fixed = transport.SystemFromContext(ctx); fixed == "" {
			fixed = DefaultSystem
		}
	}
	return semconv.MessagingSystemKey.String(fixed)
}

// errorTypeAttr is error.type for err: its class beneath the middleware's
// wrappers (transport.ErrorType).
func errorTypeAttr(err error) attribute.KeyValue {
	s := transport.ErrorType(errType(err))
	if s == "" {
		s = transport.ErrorTypeOther
	}
	return semconv.ErrorTypeKey.String(s)
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
	return tracer{t: tp.Tracer(instrumentationName), prop: prop, system: o.System}
}

// Tracing starts a consumer span "process <topic>" per handler call,
// following the OpenTelemetry messaging semantic conventions: the trace
// context extracted from Message.Header (put there by PublishTracing: the
// message's creation context) is the parent, so one trace runs from
// producer to consumer, and the span links to it, as the conventions ask
// of process spans (a batch's messages each have their own creation
// context, see PublishTracing). Attributes:
// messaging.system, messaging.operation.type "process",
// messaging.operation.name, messaging.destination.name,
// messaging.consumer.group.name, messaging.message.id,
// messaging.message.body.size, and what the transport put in Message.Meta
// (Kafka partition and offset, NATS stream sequence). A failure sets the
// span status to Error, records the error and its error.type (the class of
// the cause, transport.ErrorType: "*bus.DecodeError", not the Permanent or
// Retry wrapper); a dead-lettered message also gets AttrDeadLetterTopic, a
// message of an event type no handler knows AttrOutcome "unknown_type".
// messaging.system is TracingOptions.System, else the transport's.
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
				systemAttr(tr.system, ctx),
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
			opts := []trace.SpanStartOption{kind, trace.WithAttributes(attrs...)}
			if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
				opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
			}
			ctx, span := tr.t.Start(ctx, names.get(m.Topic, name), opts...)
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
				span.SetAttributes(errorTypeAttr(err), AttrRetryAttempts.Int(Attempts(err)))
			case r != nil && r.deadLettered:
				span.RecordError(r.err)
				span.SetStatus(codes.Error, "dead-lettered: "+r.err.Error())
				span.SetAttributes(errorTypeAttr(r.err), AttrDeadLetterTopic.String(r.dlqTopic),
					AttrRetryAttempts.Int(r.attempts))
			case r != nil && r.duplicate:
				span.SetAttributes(AttrDuplicate.Bool(true))
			case r != nil && r.other != "":
				span.SetAttributes(AttrOutcome.String(string(r.other)))
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
// "send <topic>" with messaging.system (TracingOptions.System, else the
// transport's), messaging.operation.type "send", messaging.destination.name
// and messaging.message.id (or messaging.batch.message_count for a batch).
// The message's creation context is injected into its Header (W3C
// traceparent with the default propagator) for Tracing to extract on the
// consumer side: for one message the send span's; for a batch, as the
// messaging conventions describe, each message gets a "create <topic>"
// span of its own (operation type "create", with its messaging.message.id),
// whose context is injected into it and which the send span links to. The
// caller's messages are not modified: the wrapper passes copies with their
// own Header maps.
func PublishTracing(opts TracingOptions) PublisherMiddleware {
	tr := newTracer(opts)
	producer := trace.WithSpanKind(trace.SpanKindProducer)
	return func(next transport.Publisher) transport.Publisher {
		return PublisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
			sys := systemAttr(tr.system, ctx)
			out := make([]*transport.Message, len(msgs))
			for i, m := range msgs {
				if m == nil { // the transport rejects it with a clear error
					continue
				}
				c := *m
				c.Header = make(map[string]string, len(m.Header)+2)
				maps.Copy(c.Header, m.Header)
				out[i] = &c
			}
			attrs := []attribute.KeyValue{
				sys,
				semconv.MessagingOperationTypeSend,
				semconv.MessagingOperationName("send"),
				semconv.MessagingDestinationName(topic),
			}
			var links []trace.Link
			if len(msgs) == 1 && msgs[0] != nil {
				if msgs[0].ID != "" {
					attrs = append(attrs, semconv.MessagingMessageID(msgs[0].ID))
				}
				attrs = append(attrs, semconv.MessagingMessageBodySize(len(msgs[0].Body)))
			} else {
				attrs = append(attrs, semconv.MessagingBatchMessageCount(len(msgs)))
				// One creation context per message of the batch.
				for _, c := range out {
					if c == nil {
						continue
					}
					cattrs := []attribute.KeyValue{sys, semconv.MessagingOperationTypeCreate,
						semconv.MessagingOperationName("create"), semconv.MessagingDestinationName(topic),
						semconv.MessagingMessageBodySize(len(c.Body))}
					if c.ID != "" {
						cattrs = append(cattrs, semconv.MessagingMessageID(c.ID))
					}
					cctx, cspan := tr.t.Start(ctx, "create "+topic, producer, trace.WithAttributes(cattrs...))
					tr.prop.Inject(cctx, propagation.MapCarrier(c.Header))
					cspan.End()
					if sc := cspan.SpanContext(); sc.IsValid() {
						links = append(links, trace.Link{SpanContext: sc})
					}
				}
			}
			ctx, span := tr.t.Start(ctx, "send "+topic, producer, trace.WithAttributes(attrs...), trace.WithLinks(links...))
			defer span.End()
			if len(msgs) == 1 && out[0] != nil {
				tr.prop.Inject(ctx, propagation.MapCarrier(out[0].Header))
			}
			err := next.Publish(ctx, topic, out...)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
				span.SetAttributes(errorTypeAttr(err))
			}
			return err
		})
	}
}
