// Package middleware holds busway's consume-side and publish-side
// middleware: Recover, Retry, DeadLetter, Limit, Timeout, Idempotent,
// Tracing, Metrics and Logging for handlers; PublishTracing and
// PublishMetrics for publishers.
//
// A Middleware is a plain func(transport.Handler) transport.Handler, so
// package bus (bus.WithMiddleware, bus.WithGroupMiddleware) and any
// transport take it without importing this package. Chain composes them,
// the first outermost, as with net/http middleware. Each middleware has one
// job, a zero-value options struct meaning its documented defaults, and a
// doc comment saying where in the chain it belongs.
//
// # Recommended chain
//
// Outermost first:
//
//	middleware.Chain(
//		middleware.Tracing(middleware.TracingOptions{}),
//		middleware.Metrics(middleware.MetricsOptions{}),
//		middleware.DeadLetter(pub, middleware.DeadLetterOptions{}),
//		middleware.Idempotent(store, middleware.IdempotentOptions{}),
//		middleware.Retry(middleware.RetryOptions{}),
//		middleware.Timeout(30*time.Second),
//		middleware.Limit(sem),
//		middleware.Recover(),
//	)
//
// Why this order:
//
//   - Recover sits next to the handler, so a panic becomes an error that
//     every other middleware sees: Retry retries it, DeadLetter records it
//     with the panic reason, Metrics counts it.
//   - Limit holds a slot only while the handler runs, not during Retry's
//     backoff sleeps, so a failing subscription does not starve others.
//   - Timeout bounds each attempt, not the whole retry sequence, and counts
//     the wait for a Limit slot.
//   - Retry retries in place, keeping per-key order, and only what
//     retrying can fix: it never retries transport.Permanent errors.
//   - Idempotent consults its store once per delivery and marks a message
//     handled only after success; it sits inside DeadLetter, so a
//     dead-lettered message is not marked and can be replayed from the
//     dead-letter topic.
//   - DeadLetter sees only what Retry gave up on (or a permanent error at
//     once), parks it on "<topic>.dlq" and acknowledges it; if the park
//     fails the original is not acknowledged (unless the broker refuses
//     the dead letter for good, see DeadLetter).
//   - Metrics and Tracing are outermost, so they time and see the whole
//     delivery and its outcome, including a message dead-lettered or
//     skipped as a duplicate (both return nil to the transport). Logging,
//     when used, goes just inside Metrics.
//
// Putting Retry outside DeadLetter (Watermill's common confusion between
// its Retry and PoisonQueue) would dead-letter on the first failure and then
// "retry" a message that was already acknowledged.
//
// # Delivery semantics
//
// Nothing here weakens at-least-once delivery: a middleware returns nil
// (acknowledge) only when the handler succeeded, Idempotent found the
// message already handled, or DeadLetter published it to the dead-letter
// topic. The one exception is a message whose dead letter the broker
// refuses for good, even stripped to its short headers: retrying could
// only block its key (on Kafka its partition) for ever, so DeadLetter drops
// it, logged at level Error, unless DeadLetterOptions.OnUnpublishable says
// otherwise (OutcomeDropped). When ctx ends (the subscription is closing), Retry stops at once
// and DeadLetter does not dead-letter, so the message is redelivered later.
//
// # Errors
//
// Recover returns a *PanicError (value and stack); Retry a *RetryError
// (attempt count and last error; Attempts reads it); DeadLetter, when its
// publish fails, the handler error joined with a *DeadLetterError. All
// unwrap, so errors.Is, errors.As and transport.IsPermanent see the
// handler's error through them. Bad options never panic: out-of-range values
// mean the default, and a missing dependency (nil Publisher, nil Store)
// fails messages with an error wrapping transport.ErrInvalidOptions rather
// than acknowledging them.
//
// # Observability
//
// Tracing and Metrics follow the OpenTelemetry messaging semantic
// conventions: spans "send <topic>" (producer) and "process <topic>"
// (consumer, child of the producer's context carried in W3C trace-context
// headers); metrics messaging.process.duration,
// messaging.client.consumed.messages, messaging.client.sent.messages and
// messaging.client.operation.duration, plus busway's in-flight and
// dead-letter counters. Providers and the propagator are injected through
// the options; the global ones are the fallback.
//
// # Concurrency
//
// Every middleware and store is safe for concurrent use: a transport calls
// the wrapped handler from up to SubscribeOptions.Concurrency goroutines.
// A Semaphore is meant to be shared by the chains of several subscriptions.
package middleware
