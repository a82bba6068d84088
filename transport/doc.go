// Package transport is the contract between busway and a message broker.
//
// It is a few small interfaces (Publisher, Subscriber, Subscription,
// Transport), the Message they carry, the options of a subscription, the
// error values every transport shares, and Mux, which opens a transport from
// a URL such as "chan://", "nats://host:4222" or "kafka://host:9092".
//
// Users normally work with the typed API of package bus; this package is for
// writing transports and middleware. It imports nothing else of busway.
//
// # Writing a transport
//
// The guide to writing a fourth transport, with the rules every transport
// keeps (validation, ErrClosed, context errors returned as they are,
// PublishError, CallHandler, CloudEvents headers per binding, options, the
// URLOpener shape, MaxMessageBytes, DeleteGroup, Systemer) and the
// conformance capabilities, is transport/README.md:
// https://github.com/busway/busway/blob/main/transport/README.md. The
// helpers it uses live here: ValidatePublish and ValidateSubscribe,
// CallHandler, CloseOnce, CheckURL with URLShape, InvalidURL and Query;
// package transport/backoff has the one retry policy; package
// transport/transporttest the conformance suite (Run) and CheckOpener.
//
// # Delivery semantics
//
// Every transport keeps these rules, and package transporttest checks them:
//
//   - At-least-once: a message is acknowledged (acked, committed) only after
//     its handler returned nil. A handler error means the message is delivered
//     again. Publish returns nil only after the broker durably accepted every
//     message.
//   - Groups: every group gets every message; within a group each message is
//     handled by one member.
//   - Order: messages with the same Key are handled one at a time, in publish
//     order, within one subscription, whatever the Concurrency. Messages with
//     different keys run in parallel, up to Concurrency.
//   - Backpressure: memory is bounded; a slow handler slows fetching.
//   - Shutdown: Close drains in-flight handlers and leaves no goroutine behind.
//
// # Errors
//
// Errors wrap the sentinels of this package (ErrClosed, ErrInvalidTopic,
// ErrInvalidMessage, ...) so callers can test them with errors.Is; context
// errors are returned as they are. Permanent marks a handler error that
// retrying cannot fix; middleware and transports recognise it with
// IsPermanent.
//
// The one rule of busway's error texts: a chain names busway at most once,
// at its start. Sentinels (ErrClosed reads "transport closed") and the
// error types that other errors wrap (PermanentError, PublishError,
// MessageError, PanicError, bus.DecodeError, bus.EnvelopeError) carry no
// prefix, as os.ErrNotExist and *fs.PathError carry none: their text always
// sits inside something that says where. The error that a call of package
// bus, transport, middleware or bustest creates and returns begins with
// "busway: " (as do the types that are returned whole: *URLError,
// middleware's *RetryError and *DeadLetterError); a transport's own errors
// begin with its name instead ("nats: ", "kafka: ", "chanbus: "). A busway
// error that wraps another one that already begins with "busway: " (Retry
// giving up on a handler's failed bus.Publish) leaves the inner prefix out.
// So a closed bus reads
//
//	busway: publish OrderCreated: transport closed: the bus is shut down
//
// and a dead letter's error header
//
//	busway: after 1 attempt(s): decode event "0190..." on topic "orders" of type "OrderCreated" into main.OrderCreated: ...
//
// # URLs
//
// Errors about a transport URL (*URLError) echo the URL as the caller
// wrote it to Mux.Open, with any password (or a user name given without a
// password, which for NATS is a token) replaced by "xxxxx".
//
// # Concurrency
//
// Publisher, Subscriber, Subscription and Transport implementations are safe
// for concurrent use by multiple goroutines. A Handler may be called
// concurrently (up to SubscribeOptions.Concurrency at once) but never
// concurrently for two messages of the same Key in one subscription.
package transport
