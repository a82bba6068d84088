// Package kafka is the busway transport on Apache Kafka, built on
// github.com/segmentio/kafka-go.
//
//	t, err := kafka.New(ctx, kafka.Config{Brokers: []string{"localhost:9092"}})
//
// or, through a transport.Mux with Opener registered under Scheme:
//
//	kafka://host1:9092,host2:9092?client_id=orders&partitions=3&acks=all
//
// # Publishing
//
// Publish keys each record by Message.Key and places it with the murmur2
// partitioner of the Java client (kafka-go's Murmur2Balancer), so a key lands
// on the same partition whichever client produced it. Message.Header travels
// as record headers: the canonical CloudEvents names of package transport
// ("ce_id", "ce_type", ..., "content-type") are already the Kafka binding's
// spelling. A Publish of N messages is one produce request per leader broker
// (holding every partition that broker leads), the brokers' requests sent
// concurrently, acknowledged by every in-sync replica by default; it does not
// wait for a batch timer (kafka-go's Writer waits for BatchTimeout).
//
// # Delivery semantics
//
// A subscription is a member of the consumer group SubscribeOptions.Group,
// run with kafka-go's ConsumerGroup API: each generation's partitions are
// fetched by one loop each, on a connection to the partition's leader
// (dialed with kafka-go's Dialer, TLS and SASL included), which sends its
// own Fetch requests (v4, read uncommitted: records of aborted transactions
// are delivered too) and decodes the record batches (format v2, any
// compression, CRC checked) in place, without copying a record. Within a
// partition, messages with the same key
// are handled one at a time, in offset order; different keys run in parallel
// up to SubscribeOptions.Concurrency. A handler error retries the message in
// place with exponential backoff (Kafka has no negative acknowledgement);
// only its key waits, until Config.MaxAttempts attempts (default 10) have
// failed: then the message is given up, logged at Error level, and
// committed past, so that one message never stops its partition (whose
// commit position it holds) for longer than its retry budget. Put
// middleware.DeadLetter in the chain to keep such messages; MaxAttempts -1
// retries without limit. Offsets are committed every Config.CommitInterval, as
// soon as a partition has Config.CommitEvery finished messages past its
// committed offset, when a partition is revoked and at Close, and never past
// a message whose handler has not returned nil, so delivery is
// at-least-once: after a crash, the messages handled since the last commit
// are handled again. A partition pauses fetching while MaxInFlight +
// CommitEvery of its messages are past its committed offset, so a crash
// makes the group handle again at most that many messages per partition
// (by default 256 + 5000), however fast the handlers run. Fetching also
// pauses while MaxInFlight messages are unfinished, or fetched past a
// partition's first unfinished one, so memory is bounded. When a partition is revoked it stops
// fetching and drains for at most Config.DrainTimeout; what did not finish
// goes to the new owner. A message that failed and is still waiting for its
// retry when its partition drains is left to the new owner at once, with the
// later messages of its key.
//
// A group without committed offsets starts where SubscribeOptions.StartFrom
// says (Subscribe commits the partitions' end offsets for StartLatest before
// it returns). A partition added to the topic later joins the assignment at
// the next rebalance (kafka-go checks for new partitions every 5s) and is
// read from its earliest offset, also with StartLatest: it was created after
// Subscribe began, so everything in it is new to the group.
//
// Message.Attempt counts the attempts within one subscription (Kafka keeps no
// delivery count). Message.Time is the record's timestamp; Message.Meta holds
// the partition (transport.MetaPartition) and offset (transport.MetaOffset).
//
// # Topics
//
// A missing topic is created (Config.Topics: partitions, replication factor)
// unless Config.Topics.Disable is set; then Publish and Subscribe fail with an
// error wrapping transport.ErrTopicNotFound that names the topic.
//
// # Errors
//
// Errors wrap the sentinels of package transport: ErrInvalidOptions for a bad
// Config or URL option (ErrInvalidURL), ErrUnavailable when no broker answers,
// ErrAuthentication for rejected SASL credentials or a denied ACL,
// ErrMessageTooLarge for a record whose batch, as sent (compressed), is over
// Config.MaxMessageBytes or the topic's max.message.bytes (in a
// *transport.PublishError naming the message; permanent: it never fits),
// ErrTopicNotFound,
// ErrClosed after Close.
//
// # Concurrency
//
// Transport and its subscriptions are safe for concurrent use. Close on a
// subscription, and on the Transport, waits for every goroutine it started;
// the Transport owns its own kafka-go Transport, whose connections it closes.
package kafka
