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
// # Concurrency
//
// Publisher, Subscriber, Subscription and Transport implementations are safe
// for concurrent use by multiple goroutines. A Handler may be called
// concurrently (up to SubscribeOptions.Concurrency at once) but never
// concurrently for two messages of the same Key in one subscription.
package transport
