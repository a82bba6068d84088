// Package bus is busway's typed event bus: publish Go values as events and
// handle them with typed handlers, on any transport (Go channels, NATS
// JetStream, Kafka).
//
//	b := bus.New(t, bus.WithSource("orders-svc"))
//	bus.Register[OrderCreated](b, "order-events") // optional: type -> topic
//	bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
//		return bill(ctx, e.Data)
//	})
//	b.Start(ctx)
//	defer b.Shutdown(ctx)
//	err := bus.Publish(ctx, b, OrderCreated{ID: "42"}, bus.WithKey("42"))
//
// PublishBatch sends many events of one type in one transport call (one
// broker round trip); NewMessage builds the message Publish would send,
// for an outbox.
//
// An event's type name is its Go type's EventType() string method if it has
// one, else the Go type name ("OrderCreated"). Its topic is the one given
// to Register, else the type name. A pointer type is its element type:
// Publish of an *OrderCreated publishes an OrderCreated, to its topic, and
// Subscribe[*OrderCreated] handles OrderCreated events. Several types may share a topic (so that
// an aggregate's events keep one order per key): each (topic, group) has one
// transport subscription, and its handler dispatches by event type.
//
// # Lifecycle
//
// Subscribe the handlers, then Start. Subscribe after Start starts a new
// (topic, group) at once; adding a handler to a (topic, group) that is
// already consuming is an error (ErrAlreadyStarted), never a window in which
// its events are acknowledged unhandled. Shutdown stops fetching, lets
// in-flight handlers finish (they may still publish), acknowledges what
// finished, and only then closes the transport.
//
// # Envelope
//
// Events travel as CloudEvents 1.0 in binary content mode: the attributes
// are message headers under their canonical names (transport.HeaderID
// "ce_id", transport.HeaderType "ce_type", ce_source, ce_specversion "1.0",
// ce_time in RFC 3339, ce_subject, ce_partitionkey for the key, and
// content-type), the data is the body, encoded by the Bus's Codec (JSON by
// default). IDs are UUIDv7. A message of another CloudEvents producer
// decodes; a message without these headers decodes with what is known (its
// ID, key and time), and only where routing by type is impossible (no
// ce_type on a topic with several handled types in the group) is it an
// error. EncodeEnvelope, DecodeEnvelope and Decode expose the envelope to
// other code (an outbox, a foreign consumer, fuzzing).
//
// # Delivery semantics
//
// The transport's: at least once (a message is acknowledged only after its
// handler returned nil; an error means redelivery), every group gets every
// event and within a group one handler call handles it, events with the
// same key (WithKey) are handled one at a time in publish order within a
// group, and memory is bounded (a slow handler slows fetching; Publish
// blocks on a full channel transport). Handlers must therefore be
// idempotent, or run behind the Idempotent middleware. A message of a type
// that no handler of the group knows is acknowledged and counted
// (Stats.Unknown), or given to the WithFallback handler.
//
// # Errors
//
// Calls return errors wrapping sentinels, for errors.Is: ErrClosed and
// ErrInvalidOptions (which are those of package transport),
// ErrAlreadyStarted, ErrAlreadyRegistered, ErrInvalidEventType,
// ErrInvalidEnvelope; context errors are returned as they are. New never
// fails: an invalid argument is returned by every later call (and by Err).
//
// A handler's error asks for redelivery. Permanent(err) marks an error that
// retrying cannot fix: the Retry middleware does not retry it and
// DeadLetter dead-letters it. A body that does not decode into the
// handler's type is such an error (a *DecodeError naming the topic, the
// event and the Go type), as is a malformed envelope (*EnvelopeError).
// Without DeadLetter in the chain, the transport redelivers even a
// permanent error, with backoff; a production chain should have one. A
// handler that panics does not crash the process: the Bus recovers the
// panic into a *transport.PanicError (errors.As), logs it with its stack
// at Error level on the WithLogger logger, counts it in Stats.Failed, and
// returns it as the handler's error, so the middleware outside (Metrics,
// Tracing, DeadLetter, Retry) see a failure and the message is redelivered
// like any other. The Recover middleware does the same inside the chain,
// for middleware that should see the panic as an error first.
//
// # Observability
//
// Stats counts published, handled, failed (panics included) and unknown
// events. The Bus logs lifecycle events and unknown types at Debug level,
// and handler panics with their stacks at Error level, through WithLogger;
// it never logs an error it also returns. Its transport logs to the logger
// it was made with (see WithLogger). The Bus passes its transport's
// messaging system (transport.SystemOf: "nats", "kafka", "chanbus") to its
// middleware chains in the context (transport.ContextWithSystem), so
// tracing and metrics report it without configuration, and tells them of
// messages of an unknown type (transport.ReportOutcome). Tracing, metrics and logging of each
// message are middleware (package middleware): consume-side with
// WithMiddleware (around every subscription, seeing every message),
// WithHandlerMiddleware (around every typed handler) and
// WithGroupMiddleware (one subscription), publish-side with
// WithPublishMiddleware.
//
// # Concurrency
//
// A Bus, its Subscriptions and the package's functions are safe for
// concurrent use. A handler may run concurrently with itself up to the
// subscription's WithConcurrency, never for two events of one key. A Codec
// must be safe for concurrent use.
//
// # Memory
//
// An Event is the handler's own: it may keep it, Header included. On a
// transport that keeps nothing of what it is given to publish
// (transport.PublishCopier: chanbus) and without publish middleware,
// Publish with the JSON codec recycles the message it builds (its Header
// map and body buffer) once the transport returned; a JSON handler decodes
// a flat struct (see JSON) straight into the Event, any other type into
// recycled values of it. The typed path of a flat struct on chanbus then
// costs three allocations per event besides what the decoded data itself
// needs (its strings, say): the ID and time string when publishing, the
// Event's Header copy (two) when handling. An event type the flat encoder
// does not take is copied into an interface for encoding/json, one more.
package bus
