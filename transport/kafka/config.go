package kafka

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// Config configures a Transport. Its zero value is invalid only because
// Brokers is required; every other zero field means the default its
// documentation gives.
type Config struct {
	// Brokers are the bootstrap brokers, "host:port" (port 9092 when
	// omitted). Required.
	Brokers []string
	// ClientID is sent to the brokers with every request. Default "busway".
	ClientID string
	// TLS enables TLS with this configuration. Default nil: plaintext.
	TLS *tls.Config
	// SASL authenticates the connections. Default: no authentication.
	SASL SASL

	// Topics says whether and how missing topics are created.
	Topics Provisioning

	// Acks is how many replicas must have a record before Publish returns.
	// Default AcksAll (durable: every in-sync replica).
	Acks Acks
	// Compression compresses produced record batches: "none", "gzip",
	// "snappy", "lz4" or "zstd". Default "none".
	Compression string
	// MaxMessageBytes is the largest record batch Publish sends to a
	// partition, measured as the broker measures it against the topic's
	// max.message.bytes: encoded as sent (compressed, when Compression is
	// set) with its batch header. A message that does not fit a batch of
	// its own fails with transport.ErrMessageTooLarge before anything is
	// sent, so a large body that compresses well is accepted. Topics this
	// transport creates get max.message.bytes = MaxMessageBytes, so
	// Publish refuses a message exactly when their broker would. An
	// existing topic keeps its own limit (the broker's default is 1 MiB +
	// 12 bytes): when it refuses a batch of several messages, Publish
	// splits it, and a message refused alone fails with
	// transport.ErrMessageTooLarge, the rest of the call going on. Default
	// 1 MiB + 64 KiB, so that a 1 MiB body with its key and headers fits.
	MaxMessageBytes int
	// PublishRetries is how many times a produce request that failed with a
	// retriable broker error (leader moved, not enough replicas, network) is
	// retried before Publish gives up. A retry may duplicate records
	// (at-least-once). Between tries Publish waits 50ms, doubling, at
	// most 1s (until its ctx ends). Default 3; negative means none.
	PublishRetries int

	// CommitInterval is how often a subscription commits the offsets of
	// finished messages; it also commits when a partition is revoked and at
	// Close. Default 1s.
	CommitInterval time.Duration
	// CommitEvery makes a subscription commit as soon as a partition has
	// this many finished messages past its committed offset, without
	// waiting for CommitInterval. A partition pauses fetching while
	// MaxInFlight + CommitEvery of its messages are past its committed
	// offset, so after a crash at most that many messages per partition are
	// handled again, however fast the handlers are. Default 5000: at 1000, a
	// fast consumer committed every few hundred microseconds and paused
	// whenever a commit's round trip outlasted MaxInFlight messages.
	CommitEvery int
	// RetryBackoff is the first wait before a failed message is handled
	// again, in place (Kafka has no negative acknowledgement). It doubles
	// after every failure up to RetryBackoffMax, without jitter (a
	// backoff.Policy with InitialInterval RetryBackoff, MaxInterval
	// RetryBackoffMax and MaxAttempts). Default 100ms.
	RetryBackoff time.Duration
	// RetryBackoffMax caps RetryBackoff's growth. Default 10s.
	RetryBackoffMax time.Duration
	// MaxAttempts is the retry budget of a message whose handler fails:
	// after this many attempts in place, the subscription gives the message
	// up (logged at Error level with its topic, partition, offset, ID and
	// last error) and commits past it, so that one message cannot stop its
	// key and, as the commit position cannot pass it, its partition (a
	// retrying message holds the commit position, and fetching pauses
	// MaxInFlight messages past it). Every error counts, a permanent one
	// too: with middleware.DeadLetter in the chain (the way to keep such
	// messages) an error reaches the transport only when the dead letter
	// could not be published, which a retry may fix. Given up means not
	// delivered again: Message.Attempt == MaxAttempts was its last
	// delivery. Default 10; -1 retries without limit (strict at-least-once:
	// a message that never succeeds stalls its partition for good).
	MaxAttempts int
	// DrainTimeout bounds how long a revoked partition waits for its
	// in-flight handlers before its uncommitted messages are left to the new
	// owner. It must be less than RebalanceTimeout (a member still
	// draining when the rebalance times out is dropped from the group, and
	// its commits fail): New rejects a Config where it is not. Default 10s.
	DrainTimeout time.Duration
	// SessionTimeout is the consumer group session timeout. Default 30s.
	SessionTimeout time.Duration
	// HeartbeatInterval is how often a member heartbeats, and so how fast it
	// notices a rebalance. Default 3s.
	HeartbeatInterval time.Duration
	// RebalanceTimeout is how long the coordinator waits for members to
	// rejoin during a rebalance. Default 30s.
	RebalanceTimeout time.Duration
	// FetchMaxBytes is the most bytes fetched per partition and request
	// (the broker returns a record batch larger than that whole); a
	// partition holds the response it dispatches and the next one, which it
	// fetches while it dispatches the last. Default 256 KiB: a response
	// that stays in a core's cache while it is decoded and handled (with
	// 2 × MaxMessageBytes, about 2 MiB, the consume benchmark spent about a
	// fifth more CPU a message); a partition then reads at most 256 KiB per
	// round trip to its leader.
	// A response declaring more than FetchMaxBytes + 1 MiB, or 100 MiB when
	// that is more, is not read (a corrupt size would allocate gigabytes):
	// the partition logs the error and fetches again, so a topic with
	// record batches larger than 100 MiB needs a FetchMaxBytes above them.
	FetchMaxBytes int
	// FetchMaxWait is how long the broker may hold a fetch open waiting for
	// data; it also bounds how fast an idle partition reader stops. Default
	// 250ms.
	FetchMaxWait time.Duration

	// DialTimeout bounds each connection attempt. Default 10s.
	DialTimeout time.Duration
	// RequestTimeout bounds a request to the brokers when the caller's
	// context has no deadline. Default 30s.
	RequestTimeout time.Duration

	// Logger receives diagnostics (rebalances, commit failures, handler
	// errors that are retried). Default nil: discard.
	Logger *slog.Logger
}

// SASL configures SASL authentication.
type SASL struct {
	// Mechanism is "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512" (case
	// insensitive). Empty means no SASL.
	Mechanism string
	// Username and Password are the credentials.
	Username, Password string
}

// Provisioning says whether and how missing topics are created.
type Provisioning struct {
	// Disable stops the transport from creating a missing topic: Publish and
	// Subscribe then fail with transport.ErrTopicNotFound. Default false:
	// missing topics are created. (A broker with auto.create.topics.enable
	// may still create topics itself.)
	Disable bool
	// Partitions of a created topic. Default 0: the broker's num.partitions.
	Partitions int
	// ReplicationFactor of a created topic. Default 0: the broker's
	// default.replication.factor.
	ReplicationFactor int
}

// Acks is the number of acknowledgements a produce request waits for.
type Acks int

const (
	// AcksAll waits for every in-sync replica: Publish returning nil means
	// the records are durable. The default.
	AcksAll Acks = iota
	// AcksLeader waits for the partition leader only.
	AcksLeader
	// AcksNone does not wait at all: Publish cannot know whether the broker
	// accepted the records. Not at-least-once.
	AcksNone
)

func (a Acks) String() string {
	switch a {
	case AcksAll:
		return "all"
	case AcksLeader:
		return "leader"
	case AcksNone:
		return "none"
	}
	return "Acks(" + strconv.Itoa(int(a)) + ")"
}

func (a Acks) required() kafkago.RequiredAcks {
	switch a {
	case AcksLeader:
		return kafkago.RequireOne
	case AcksNone:
		return kafkago.RequireNone
	}
	return kafkago.RequireAll
}

// config is Config validated, with defaults applied.
type config struct {
	Config
	compression kafkago.Compression
	mechanism   sasl.Mechanism
	log         *slog.Logger
	// retry is the in-place retry of a failed handler: RetryBackoff,
	// doubling, at most RetryBackoffMax, MaxAttempts attempts.
	retry backoff.Policy
	// produce is the retry of a failed produce request: from
	// publishBackoff, doubling, at most publishBackoffMax,
	// 1+PublishRetries attempts.
	produce backoff.Policy
	// maxResponse is the largest fetch response read (maxFetchResponse).
	maxResponse int64
}

// The produce retry's delays. Before backoff.Policy the delay doubled
// without a cap; with PublishRetries raised, the last waits grew past any
// caller's deadline (50ms x 2^19 is 7 hours). Kafka's Java producer caps
// the same doubling at 1s (retry.backoff.max.ms).
const (
	publishBackoff    = 50 * time.Millisecond
	publishBackoffMax = time.Second
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: kafka: "+format, append([]any{transport.ErrInvalidOptions}, args...)...)
}

func (c Config) resolve() (*config, error) {
	r := &config{Config: c}
	if len(c.Brokers) == 0 {
		return nil, invalid("Brokers is required (e.g. []string{\"localhost:9092\"})")
	}
	r.Brokers = make([]string, 0, len(c.Brokers))
	for _, b := range c.Brokers {
		b = strings.TrimSpace(b)
		if b == "" {
			return nil, invalid("empty broker address in Brokers")
		}
		host, port, err := net.SplitHostPort(b)
		if err != nil {
			// No port: use Kafka's.
			host, port = b, "9092"
			if strings.Contains(b, ":") && !strings.HasPrefix(b, "[") {
				return nil, invalid("broker address %q: %v", b, err)
			}
			host = strings.Trim(host, "[]")
		}
		if host == "" {
			return nil, invalid("broker address %q has no host", b)
		}
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return nil, invalid("broker address %q: bad port %q", b, port)
		}
		r.Brokers = append(r.Brokers, net.JoinHostPort(host, port))
	}
	if r.ClientID == "" {
		r.ClientID = "busway"
	}
	switch strings.ToUpper(c.SASL.Mechanism) {
	case "":
		if c.SASL.Username != "" || c.SASL.Password != "" {
			return nil, invalid("SASL credentials given without SASL.Mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
		}
	case "PLAIN":
		r.mechanism = plain.Mechanism{Username: c.SASL.Username, Password: c.SASL.Password}
	case "SCRAM-SHA-256", "SCRAM-SHA-512":
		algo := scram.SHA256
		if strings.ToUpper(c.SASL.Mechanism) == "SCRAM-SHA-512" {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, c.SASL.Username, c.SASL.Password)
		if err != nil { // SASLprep rejected the username or password
			return nil, invalid("SASL credentials for %s: %v", c.SASL.Mechanism, err)
		}
		r.mechanism = m
	default:
		return nil, invalid("SASL.Mechanism %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASL.Mechanism)
	}
	if r.mechanism != nil && c.SASL.Username == "" {
		return nil, invalid("SASL.Username is required with SASL.Mechanism %s", c.SASL.Mechanism)
	}
	// Kafka's protocol carries these as int32 (partitions, byte sizes) and
	// int16 (the replication factor): a larger value would wrap on the wire.
	if c.Topics.Partitions < 0 || c.Topics.Partitions > math.MaxInt32 {
		return nil, invalid("Topics.Partitions %d is not between 0 (the broker's default) and %d", c.Topics.Partitions, math.MaxInt32)
	}
	if c.Topics.ReplicationFactor < 0 || c.Topics.ReplicationFactor > math.MaxInt16 {
		return nil, invalid("Topics.ReplicationFactor %d is not between 0 (the broker's default) and %d", c.Topics.ReplicationFactor, math.MaxInt16)
	}
	if c.Acks < AcksAll || c.Acks > AcksNone {
		return nil, invalid("Acks %d is not AcksAll, AcksLeader or AcksNone", int(c.Acks))
	}
	switch strings.ToLower(c.Compression) {
	case "", "none":
	case "gzip":
		r.compression = kafkago.Gzip
	case "snappy":
		r.compression = kafkago.Snappy
	case "lz4":
		r.compression = kafkago.Lz4
	case "zstd":
		r.compression = kafkago.Zstd
	default:
		return nil, invalid("Compression %q is not none, gzip, snappy, lz4 or zstd", c.Compression)
	}
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxMessageBytes", &r.MaxMessageBytes, 1<<20 + 64<<10},
		{"CommitEvery", &r.CommitEvery, 5000},
		{"FetchMaxBytes", &r.FetchMaxBytes, 256 << 10},
	}
	for _, f := range ints {
		if *f.v < 0 {
			return nil, invalid("%s %d is negative (0 means the default)", f.name, *f.v)
		}
		if *f.v > math.MaxInt32 {
			return nil, invalid("%s %d is above %d, the most Kafka's protocol carries", f.name, *f.v, math.MaxInt32)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	switch {
	case r.MaxAttempts == 0:
		r.MaxAttempts = 10
	case r.MaxAttempts < -1:
		return nil, invalid("MaxAttempts %d is below -1 (-1 means unlimited, 0 the default 10)", r.MaxAttempts)
	}
	switch {
	case r.PublishRetries == 0:
		r.PublishRetries = 3
	case r.PublishRetries < 0:
		r.PublishRetries = 0
	}
	durs := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"CommitInterval", &r.CommitInterval, time.Second},
		{"RetryBackoff", &r.RetryBackoff, 100 * time.Millisecond},
		{"RetryBackoffMax", &r.RetryBackoffMax, 10 * time.Second},
		{"DrainTimeout", &r.DrainTimeout, 10 * time.Second},
		{"SessionTimeout", &r.SessionTimeout, 30 * time.Second},
		{"HeartbeatInterval", &r.HeartbeatInterval, 3 * time.Second},
		{"RebalanceTimeout", &r.RebalanceTimeout, 30 * time.Second},
		{"FetchMaxWait", &r.FetchMaxWait, 250 * time.Millisecond},
		{"DialTimeout", &r.DialTimeout, 10 * time.Second},
		{"RequestTimeout", &r.RequestTimeout, 30 * time.Second},
	}
	for _, d := range durs {
		if *d.v < 0 {
			return nil, invalid("%s %v is negative (0 means the default, %v)", d.name, *d.v, d.def)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if r.RetryBackoffMax < r.RetryBackoff {
		return nil, invalid("RetryBackoffMax %v is less than RetryBackoff %v", r.RetryBackoffMax, r.RetryBackoff)
	}
	if r.DrainTimeout >= r.RebalanceTimeout {
		return nil, invalid("DrainTimeout %v must be less than RebalanceTimeout %v (a partition still draining when the rebalance times out loses its commits)", r.DrainTimeout, r.RebalanceTimeout)
	}
	if r.HeartbeatInterval >= r.SessionTimeout {
		return nil, invalid("HeartbeatInterval %v must be less than SessionTimeout %v", r.HeartbeatInterval, r.SessionTimeout)
	}
	r.retry = backoff.Policy{InitialInterval: r.RetryBackoff, MaxInterval: r.RetryBackoffMax, MaxAttempts: max(r.MaxAttempts, 0)}
	r.produce = backoff.Policy{InitialInterval: publishBackoff, MaxInterval: publishBackoffMax, MaxAttempts: 1 + r.PublishRetries}
	r.maxResponse = maxFetchResponse(r.FetchMaxBytes)
	r.log = c.Logger
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r, nil
}
