// Package nats is busway's NATS JetStream transport, on nats.go and its
// jetstream package. It talks to a NATS server or cluster, or starts an
// embedded nats-server in the process, so a single binary gets durable,
// replayable events with no infrastructure and later points at a cluster
// by changing its URL:
//
//	nats://embedded?store_dir=/var/lib/app/nats   // in-process server, file storage
//	nats://nats-1:4222,nats-2:4222,nats-3:4222?creds=/etc/app/app.creds&replicas=3
//
// Open it with New and a Config, or by URL with Opener and a transport.Mux.
//
// # Streams and subjects
//
// One stream (Config.Stream, default "BUSWAY") holds every topic: topic t is
// the subject "<SubjectPrefix>.t" (default "busway.t") and the stream holds
// "<SubjectPrefix>.>". With ProvisionCreate (the default) New creates the
// stream with the storage, replicas, max age and duplicate window of Config
// when it is missing; a stream that exists keeps every setting an operator
// (or an earlier start) gave it: New only adds the subjects when it lacks
// them and logs, without applying them, the settings that differ from
// Config. With ProvisionBind it uses a stream an operator made and fails
// with transport.ErrTopicNotFound when it is missing or does not hold the
// subjects. In both modes a stream with work-queue or interest retention is
// refused (transport.ErrInvalidOptions): it deletes a message once one
// consumer, or the consumers of the moment, acked it, so not every group
// would get every message.
//
// Each (group, topic) is a durable pull consumer of that stream, named
// "<group>_<topic>_<hash>" ('.' becomes '_'; the hash keeps names apart)
// unless the Durable option names it. Members of a group that subscribe to
// the same topic share the consumer and so compete for its messages.
//
// # Delivery semantics
//
//   - Publish sets the Nats-Msg-Id header to "<subject>/<Message.ID>", so
//     JetStream drops a re-publish of the same ID to the same topic within
//     Config.Duplicates (default 2m): an outbox relay that re-publishes after
//     a crash does no harm. The duplicate window belongs to the stream, which
//     holds every topic; scoped to the subject, the same ID published to
//     another topic (a dead letter, one event sent to two topics) is stored
//     and delivered there. A message derived from another (a dead letter, a
//     replay) needs a new Message.ID to be taken for a new message on the
//     same topic; the event's identity stays in ce_id. It returns
//     once the server stored every message (a JetStream ack); a batch is
//     published asynchronously and awaited as a whole.
//   - At-least-once: a message is acked after its handler returned nil;
//     Subscription.Close waits until the server has received the acks (a
//     flush round trip), so a finished message is not redelivered. A handler
//     error Naks it with a delay (Config.NakDelays, by attempt); a handler
//     that outlives a third of AckWait has its message kept with in-progress
//     acks; a crashed member's messages are redelivered after AckWait.
//     MaxDeliver is unlimited by default; a message whose handler fails on
//     its last delivery (Message.Attempt == MaxDeliver) is terminated (Term,
//     logged at level Error): it stays in the stream but this group does
//     not get it again, and the consumer's ack floor moves past it. Put
//     DeadLetter in the chain to keep such messages.
//   - Nothing ages unseen: a subscription holds at most MaxHeld messages
//     (default min(max(256, 2*Concurrency), max(MaxAckPending/8,
//     Concurrency))) received and not yet finished, and pulls only as many
//     as it has room for, so no message waits in a client buffer; every
//     message it holds, waiting behind others of its key or running, is
//     reported in progress every quarter of AckWait, so it is not
//     redelivered while it waits.
//   - After a member crashes, the messages it held (at most MaxHeld) are
//     redelivered after AckWait, by then possibly after later messages of
//     their keys: that is the order a crash does not keep. Every other
//     message keeps its key's order, and as what dead members hold is
//     bounded by MaxHeld, well below MaxAckPending, they cannot stall the
//     group.
//   - Server restarts: a subscription speaks JetStream's pull protocol on
//     one inbox that lives as long as it does, asking for as many messages
//     as it has room for. A message the server sent is handled even when
//     it arrives after the server ended the request (a server announces
//     its shutdown before it stops sending); after a reconnect the
//     subscription asks again at once, and a request the server drops
//     without a word (a consumer leader change in a cluster) is noticed
//     by its missing heartbeats within 3s. Only a message lost with the
//     connection itself, and one whose ack was lost with it, comes back
//     after AckWait. Around a reconnect a subscription may briefly hold
//     up to one pull batch more than MaxHeld.
//   - Durable: a group's position lives in the server. Messages published
//     while no member runs are delivered when one subscribes again, also
//     after a process or server restart (file storage). StartFrom applies
//     when the group's consumer is created.
//   - Order: one subscription runs its handlers on a key-ordered
//     dispatcher: messages with the same Key are handled one at a time in
//     stream order, different keys (and messages without a Key) in
//     parallel up to Concurrency; a slow key holds up only its own later
//     messages.
//   - Backpressure: the consumer's MaxAckPending (default
//     max(2048, 64*Concurrency)) bounds the messages handed out to the
//     group and not yet acked, and MaxHeld what one subscription holds; a
//     slow handler slows the pulls.
//   - Message.Attempt is the server's delivery count, Message.Time the time
//     the stream stored the message, Message.Meta[transport.MetaSequence]
//     its stream sequence. The delivered Message and its Header and Meta
//     maps are reused for a later message once the handler returned, as
//     transport.Message allows: a handler that keeps one must Clone it.
//
// How this differs from the chanbus transport:
//
//   - A Nak'ed message is redelivered after its delay, by then possibly
//     after later messages of its key, so a handler error can reorder a key.
//     The Retry middleware retries in place, which keeps the order.
//   - Per-key order holds within one subscription. Members of a group share
//     the consumer by message, not by key, so two members may handle
//     messages of one key at the same time.
//   - Durable and replayable, where chanbus drops what no group waits for.
//   - A subscription that closes runs the messages it holds until its
//     context ends and hands back (Nak without delay) those that arrived as
//     it began closing or did not start, which counts as a delivery in
//     Message.Attempt. Close drains the pull inbox first (what the server
//     sent before it saw the unsubscribe is received and handed back); a
//     message the server was sending just as it did can, rarely, wait for
//     AckWait before another member gets it.
//
// # Headers
//
// The CloudEvents attributes (transport.Header*, spelled "ce_" in
// Message.Header) travel with the NATS binding's "ce-" prefix and come back
// as "ce_"; the Key travels as "ce-partitionkey" and is delivered as
// Message.Key and Header["ce_partitionkey"]. A foreign CloudEvents client
// reads and writes them natively. Message.ID is delivered as the publisher
// set it (Nats-Msg-Id without its "<subject>/" scope; a foreign producer's
// Nats-Msg-Id as it is, or ce-id when it set none). Other headers travel
// unchanged (case kept). Header names are checked as nats.go checks them
// (printable ASCII without space or "()/,:;<=>?@[\]{}). A NATS header is a
// line that nats.go trims, so a header value, ID or Key with a CR or LF,
// or with a space or tab at its start or end (transport.HeaderValueError),
// is refused, not sent changed: nats.go would deliver "a  b" for "a\r\nb"
// and "k" for " k ", and an ID changed so is another message to the
// duplicate window and the inbox.
//
// # Reconnects
//
// The connection reconnects forever. A Publish whose acks do not arrive
// (server down, timeout) returns an error naming the messages, so a Publish
// that returned nil was stored; re-publishing with the same IDs is safe.
// Subscriptions resume pulling by themselves after a reconnect.
//
// # Embedded server
//
// Config.Embedded (or nats://embedded?store_dir=...) starts nats-server in
// the process with JetStream and file storage in StoreDir, listening on
// 127.0.0.1 at a random port (EmbeddedConfig.Port, Transport.EmbeddedURL)
// for tools such as the nats CLI (NoListen turns that off); the transport
// itself talks to it in-process.
// Close shuts it down and waits for it.
//
// # Errors
//
// New returns errors wrapping transport.ErrInvalidOptions (config),
// transport.ErrUnavailable (no server answered, JetStream disabled),
// transport.ErrAuthentication (credentials rejected) and
// transport.ErrTopicNotFound (bind mode, stream missing). Publish returns
// transport.ErrInvalidTopic, transport.ErrInvalidMessage (a nil message:
// nothing of the call is sent), transport.ErrClosed, or a
// *transport.PublishError naming the messages the server did not store.
// A message that can never be stored fails alone, before it is sent, with
// a permanent (transport.IsPermanent) error in the PublishError, while the
// others of the call are published: transport.ErrMessageTooLarge when it
// is larger than Transport.MaxMessageBytes with its headers (the error
// states both sizes, so a caller can shrink it and try again), and
// transport.ErrInvalidMessage for a header name nats.go refuses or a value
// it would change.
// Context errors are returned as they are.
//
// # Observability
//
// Disconnects, reconnects, failed acks and the embedded server's log go to
// Config.Logger (default: discard). Conn and JetStream expose the nats.go
// connection for what this package does not cover.
package nats
