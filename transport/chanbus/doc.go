// Package chanbus is busway's in-process transport: publish and subscribe
// between goroutines of one program, on Go channels. It is what unit tests
// and the bustest harness run on, and what a modular monolith uses before it
// moves to a broker. Open it with New, or by URL ("chan://", see Opener).
//
// # Delivery semantics
//
// chanbus is NOT durable. Messages live in memory only:
//
//   - A message published to a topic that has no subscribed group is dropped
//     (Publish returns nil), counted in Stats.Unrouted and logged at debug
//     level: a dead-letter topic that nobody reads loses what reaches it. A
//     group exists while it has at least one member;
//     when its last member's subscription closes, the group is removed and the
//     messages still queued for it are dropped. StartFrom therefore makes no
//     difference: a new group gets what is published after Subscribe returned.
//   - Every group gets its own copy of every message; within a group the
//     members share the group's queues and each message is handled by one
//     member.
//   - Per (topic, group) the messages of one Key are handled one at a time
//     and in publish order, even across several members; messages of other
//     keys, and messages without a Key, are handled in parallel with them.
//     Each key has its own queue, so a slow or full key holds up only
//     itself. A subscription runs Concurrency workers, so at most
//     Concurrency of its handlers run at once.
//   - A handler error keeps the message at the head of its key's queue, to
//     be delivered again after an exponential backoff (WithBackoff); the key
//     waits meanwhile, so its order holds, and other keys go on.
//     Message.Attempt counts the deliveries. There is no limit on attempts:
//     bound them with the Retry and DeadLetter middleware.
//   - Every group sees a topic in one order: with several groups, a message
//     is handled by none of them before it was queued for all, so a
//     follow-up that one group's handler publishes never overtakes its
//     cause in another group.
//   - Publish copies each message (Header and Body) for each group, so the
//     caller may reuse it once Publish returned, whatever it returned
//     (Transport is a transport.PublishCopier), and the groups' handlers do
//     not share it. A redelivery hands the handler the same Message value as
//     the failed delivery: changes a handler made to it remain. Once a
//     handler returned nil, its Message (Header map and Body included) is
//     reused for a later message, as the transport contract allows: a
//     handler that keeps any of it must Clone it.
//   - Backpressure: Publish blocks while a group has WithBuffer messages of
//     the message's key waiting for a worker, or buffer x shards messages in
//     all (WithShards; keyless ones included), until its context ends;
//     memory is bounded by that many messages per group. One exception
//     keeps handlers that publish from deadlocking: a Publish from inside a
//     handler of this transport (its ctx, or one derived from it) waits on a
//     full key or group only while a running worker is sure to make room
//     there; when the room could only come from a worker that is itself
//     waiting to publish (the handler's own key, say: a follow-up with its
//     own key, or a group whose every worker waits), the message is queued
//     beyond the bound instead. So handlers may publish to their own topic,
//     and groups to each other's, under any load; what such publishes add
//     beyond the bound is what those handlers publish while every way out
//     is blocked. A handler that waits for something other than chanbus
//     and says so (transport.Block; middleware.Limit's Semaphore does)
//     counts as waiting too: a handler holding a shared semaphore may
//     publish to groups whose handlers wait for it.
//
// # Shutdown
//
// Subscription.Close stops taking messages, lets the running handlers finish
// (until its context ends; then their context is cancelled and Close waits
// for them to return) and, when it was the group's last member, removes the
// group. Transport.Close closes every subscription and waits for all of
// them, cancelling the handlers' context once the drain timeout
// (WithDrainTimeout) has passed, and then returns the subscriptions'
// context errors (errors.Is(err, context.DeadlineExceeded)): their messages
// were abandoned, and chanbus, not durable, has lost them. No goroutine
// outlives it. WaitIdle and WaitSettled tell tests when everything published
// so far was handled. A handler that ignores its cancelled context and never
// returns keeps Transport.Close waiting.
//
// A handler that panics does not crash the process: chanbus recovers the
// panic (transport.CallHandler), logs it with its stack at level Error on the
// WithLogger logger, and delivers the message again like any failure (a
// bus.Bus recovers its handlers' panics itself, on its own logger, first). A
// handler that ends its goroutine
// with runtime.Goexit (t.FailNow or t.Fatal in a handler) is logged too and
// its message is delivered again; a new worker goroutine takes the place of
// the one that ended, so the key and the subscription go on.
//
// # Errors
//
// Publish and Subscribe return errors wrapping the sentinels of package
// transport (ErrClosed, ErrInvalidTopic, ErrInvalidMessage,
// ErrInvalidOptions); context errors are returned as they are, or inside a
// *transport.PublishError when part of a batch was queued.
//
// # Observability
//
// Handler failures and dropped messages are logged at debug level on the
// logger given with WithLogger (none by default).
//
// # Files
//
// options.go holds the options and the chan:// opener; transport.go the
// Transport, its Close and its counters; publish.go Publish and the pooled
// copies it queues; group.go a (topic, group): its dispatcher, backpressure,
// retry backoff and teardown; subscribe.go Subscribe, the workers and
// Subscription.Close; wait.go what WaitIdle, WaitSettled and the deadlock
// avoidance of publishing handlers count.
package chanbus
