package transport

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"time"
)

// Message is the unit a transport carries. Publishers fill ID, Key, Header and
// Body; transports set Topic, Time and Attempt on delivery.
//
// A Handler must not keep a Message or its Body after it returned: a
// transport may reuse them.
type Message struct {
	// ID identifies the message; brokers that deduplicate (NATS JetStream)
	// use it to drop a re-publish.
	ID string
	// Key orders messages: those with the same non-empty Key are handled one
	// at a time, in publish order. On Kafka it is also the record key.
	Key string
	// Header carries string attributes. Keys are case-sensitive and travel
	// unchanged, except the CloudEvents attributes, which each transport
	// renders in its broker binding's spelling and maps back on delivery.
	Header map[string]string
	// Body is the payload, opaque to the transport.
	Body []byte

	// Topic is set on delivery: the topic the message was published to.
	Topic string
	// Group is set on delivery: the group (SubscribeOptions.Group) it was
	// delivered to.
	Group string
	// Time is set on delivery: the broker's time where the broker records
	// one, else the time the transport received the message.
	Time time.Time
	// Attempt is set on delivery: 1 the first time, counted up on each
	// redelivery where the broker or transport counts deliveries.
	Attempt int
	// Meta is set on delivery by transports that know more about where the
	// message came from, keyed by OpenTelemetry messaging attribute names
	// (MetaPartition, MetaOffset, ...). It is never sent. May be nil.
	Meta map[string]string
}

// Delivery facts a transport may put into Message.Meta, named after the
// OpenTelemetry messaging semantic conventions.
const (
	MetaPartition = "messaging.destination.partition.id"
	MetaOffset    = "messaging.kafka.offset"
	MetaSequence  = "messaging.nats.stream.sequence"
)

// Header names of the CloudEvents 1.0 attributes in their one canonical
// spelling in Message.Header, whatever the transport. On the wire each
// transport renders them in its binding's spelling (Kafka "ce_", NATS "ce-")
// and maps them back on delivery. A transport that carries Key in a header
// (NATS) also delivers it as Header[HeaderPartitionKey].
const (
	HeaderPrefix       = "ce_"
	HeaderID           = "ce_id"
	HeaderSource       = "ce_source"
	HeaderSpecVersion  = "ce_specversion"
	HeaderType         = "ce_type"
	HeaderSubject      = "ce_subject"
	HeaderTime         = "ce_time"
	HeaderDataSchema   = "ce_dataschema"
	HeaderPartitionKey = "ce_partitionkey" // the partitioning extension: Key
	HeaderContentType  = "content-type"
	// HeaderDataContentType is the CloudEvents datacontenttype attribute in
	// the canonical "ce_" spelling. busway writes the content type as
	// HeaderContentType, as the Kafka and HTTP bindings do; some producers
	// (CloudEvents sdk-go's NATS binding) write "ce-datacontenttype"
	// instead, which transports deliver as this header. Readers take
	// HeaderContentType first, then this.
	HeaderDataContentType = "ce_datacontenttype"
)

// Clone returns a deep copy of m.
func (m *Message) Clone() *Message {
	if m == nil {
		return nil
	}
	c := *m
	c.Header = maps.Clone(m.Header)
	c.Meta = maps.Clone(m.Meta)
	c.Body = bytes.Clone(m.Body)
	return &c
}

// Handler handles one delivered message. Returning nil acknowledges it;
// returning an error asks for redelivery (see Permanent for errors that
// retrying cannot fix; what happens to those is up to the middleware).
type Handler func(ctx context.Context, m *Message) error

// Publisher sends messages to a topic.
//
// Publish returns after the broker has durably accepted every message, or
// with an error naming what failed (a *PublishError for a batch that failed in
// part). It batches where the broker allows. Safe for concurrent use.
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...*Message) error
}

// PublishCopier is implemented by a Publisher whose Publish keeps nothing
// of the messages it was given once it returned, whatever it returned: no
// *Message, Header map or Body (it copies what it queues, as chanbus
// does). The caller may then reuse all of them at once, and package bus
// recycles the memory of the messages it publishes on such a publisher. A
// publisher that may still read a message after Publish returned (a
// broker client's batch still in flight when ctx ended) must not
// implement it; wrappers (middleware) do not, unless they make the same
// promise for what they pass on.
type PublishCopier interface {
	Publisher
	// PublishCopies marks the promise; it does nothing.
	PublishCopies()
}

// Subscriber starts consuming a topic in the background.
//
// Subscribe returns once the subscription is established (a group's position
// exists), so a message published after Subscribe returned is delivered to it
// even with StartLatest. Safe for concurrent use.
type Subscriber interface {
	Subscribe(ctx context.Context, topic string, h Handler, opts SubscribeOptions) (Subscription, error)
}

// Subscription is a running consumer.
type Subscription interface {
	// Close stops fetching, lets in-flight handlers finish until ctx ends,
	// acknowledges what finished and releases everything, then returns nil.
	//
	// When ctx ends first (or has ended already), Close cancels the
	// context of the handlers still running and waits for them to return:
	// their messages are abandoned, not acknowledged, and redelivered later
	// on durable transports. Then it returns ctx's error as it is
	// (errors.Is(err, context.DeadlineExceeded) or context.Canceled). It
	// never returns while a handler of the subscription runs, so a handler
	// that ignores its context keeps Close waiting.
	//
	// Close is idempotent and safe for concurrent use: a later or
	// concurrent call returns what the first one returned, once it has.
	// transporttest checks all of this (CloseDrains, CloseExpiredContext).
	Close(ctx context.Context) error
}

// Transport is a Publisher and a Subscriber with a lifetime.
type Transport interface {
	Publisher
	Subscriber
	// Close closes every subscription still open, together, each as
	// Subscription.Close does with a context that ends after the
	// transport's drain timeout (chanbus WithDrainTimeout, NATS AckWait,
	// Kafka Config.DrainTimeout), then releases the connections. Publish
	// and Subscribe return ErrClosed from the moment Close begins. It takes
	// no context, as io.Closer and the brokers' clients do: the drain
	// timeout is its bound, set where the transport is configured.
	// Idempotent: a later or concurrent call waits for the first and
	// returns its error. Its error joins what failed to close, and a drain
	// that ran out of time is always among it: the context errors of the
	// subscriptions whose handlers were abandoned (errors.Is(err,
	// context.DeadlineExceeded)). A durable transport (NATS, Kafka)
	// redelivers their messages later; chanbus has lost them.
	// transporttest checks this (CloseDrainTimeout).
	// A transport keeps its closed state in a transport.CloseOnce.
	Close() error
}

// StartPosition says where a group that has no committed position yet
// starts reading.
type StartPosition int

const (
	// StartLatest delivers only messages published after the group was
	// created. The default.
	StartLatest StartPosition = iota
	// StartEarliest delivers every message the broker still retains.
	StartEarliest
)

func (p StartPosition) String() string {
	switch p {
	case StartLatest:
		return "latest"
	case StartEarliest:
		return "earliest"
	}
	return fmt.Sprintf("StartPosition(%d)", int(p))
}

// SubscribeOptions configure a subscription. Group is required; every other
// zero value means the default.
type SubscribeOptions struct {
	// Group names the consumer group (NATS durable name, Kafka group ID).
	// Every group gets every message; within a group each message goes to
	// one member. Required.
	Group string
	// Concurrency is the number of handlers that may run at once for this
	// subscription, each on a goroutine of its own. Default 1; negative, or
	// more than MaxConcurrency, is an error.
	Concurrency int
	// StartFrom applies when the group has no committed position yet.
	// Default StartLatest.
	StartFrom StartPosition
	// Specific holds options of one transport (for example a NATS AckWait or
	// a Kafka fetch size), as typed values that transport exports. A transport
	// ignores the options of other transports, so one SubscribeOptions works
	// whichever transport the URL selects.
	Specific []SpecificOption
}

// SpecificOption is a transport-specific subscribe option. Transport names
// the transport it belongs to ("chan", "nats", "kafka").
type SpecificOption interface {
	Transport() string
}

// Validate reports the first invalid field, wrapping ErrInvalidOptions.
func (o SubscribeOptions) Validate() error {
	switch {
	case o.Group == "":
		return fmt.Errorf("%w: Group is required (the consumer group or durable name)", ErrInvalidOptions)
	case o.Concurrency < 0:
		return fmt.Errorf("%w: Concurrency %d is negative (0 means the default, 1)", ErrInvalidOptions, o.Concurrency)
	case o.Concurrency > MaxConcurrency:
		return fmt.Errorf("%w: Concurrency %d is more than %d (each handler slot is a goroutine; to cap work shared by many subscriptions use a middleware.Semaphore)",
			ErrInvalidOptions, o.Concurrency, MaxConcurrency)
	case o.StartFrom != StartLatest && o.StartFrom != StartEarliest:
		return fmt.Errorf("%w: StartFrom %v is neither StartLatest nor StartEarliest", ErrInvalidOptions, o.StartFrom)
	}
	if err := ValidateName("Group", o.Group); err != nil {
		return err
	}
	return nil
}

// MaxConcurrency is the most SubscribeOptions.Concurrency a transport
// takes: a subscription starts that many goroutines (and NATS sizes the
// consumer's MaxAckPending by it), so a mistyped million would take
// gigabytes before the first message.
const MaxConcurrency = 1 << 16

// Workers returns Concurrency with the default applied.
func (o SubscribeOptions) Workers() int {
	if o.Concurrency <= 0 {
		return 1
	}
	return o.Concurrency
}

// GroupDeleter is implemented by transports that keep a group's position
// in the broker after its subscriptions closed (a NATS durable consumer,
// Kafka committed offsets), so that a program can remove a group it made
// for a while only: a tool's throwaway reader, a retired service.
// Transports whose groups end with their last subscription (chanbus) do
// not implement it; test with a type assertion:
//
//	if d, ok := t.(transport.GroupDeleter); ok {
//		err = d.DeleteGroup(ctx, topic, group)
//	}
//
// Safe for concurrent use.
type GroupDeleter interface {
	// DeleteGroup removes what the broker keeps of group for topic: its
	// position and its unacknowledged messages (the messages themselves stay
	// in the topic). A group subscribed again afterwards starts anew, at its
	// StartFrom. The group must have no open subscription on topic (close
	// them first; a broker may refuse with an error otherwise). Deleting a
	// group that does not exist is not an error.
	DeleteGroup(ctx context.Context, topic, group string) error
}
