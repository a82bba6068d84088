package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/busway/busway/transport"
)

var _ transport.Transport = (*Transport)(nil)

// Transport is a busway transport on a Kafka cluster. Create it with New;
// it is safe for concurrent use. Close it to release its connections.
type Transport struct {
	cfg    *config
	kt     *kafkago.Transport // our own: DefaultTransport's pools are never closed
	conns  *connTracker       // kt's connections
	client *kafkago.Client
	dialer *kafkago.Dialer
	addr   net.Addr
	cancel context.CancelFunc // ends kt's background work (its Context) at Close

	balancer kafkago.Murmur2Balancer
	rr       atomic.Uint32 // spreads keyless publishes over partitions

	// startMu serializes resolveStart, so that two Subscribes of one new
	// group in this process cannot both set its start: the second would
	// move the position past a message published after the first returned.
	startMu sync.Mutex

	closer transport.CloseOnce

	mu     sync.Mutex
	subs   map[*subscription]struct{}
	topics map[string]topicInfo
}

type topicInfo struct {
	ids     []int   // 0..partitions-1, read only
	leaders []int32 // broker ID of each partition's leader, read only
	expires time.Time
}

// topicTTL is how long a topic's partition count is trusted before it is
// looked up again (partitions may be added to a topic).
const topicTTL = time.Minute

// New returns a Transport for cfg. It checks the configuration and that a
// broker answers (with the credentials) before it returns: an invalid
// configuration gives an error wrapping transport.ErrInvalidOptions,
// unreachable brokers one wrapping transport.ErrUnavailable, rejected
// credentials one wrapping transport.ErrAuthentication.
func New(ctx context.Context, cfg Config) (*Transport, error) {
	c, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	tctx, cancel := context.WithCancel(context.Background())
	t := &Transport{
		cfg:    c,
		addr:   kafkago.TCP(c.Brokers...),
		cancel: cancel,
		subs:   make(map[*subscription]struct{}),
		topics: make(map[string]topicInfo),
	}
	t.conns = &connTracker{d: net.Dialer{Timeout: c.DialTimeout}, coalesce: c.TLS == nil}
	t.kt = &kafkago.Transport{
		Dial:        t.conns.dial,
		DialTimeout: c.DialTimeout,
		ClientID:    c.ClientID,
		TLS:         c.TLS,
		SASL:        c.mechanism,
		Context:     tctx,
	}
	t.client = &kafkago.Client{Addr: t.addr, Transport: t.kt, Timeout: c.RequestTimeout}
	t.dialer = &kafkago.Dialer{
		ClientID:      c.ClientID,
		Timeout:       c.DialTimeout,
		DualStack:     true,
		TLS:           c.TLS,
		SASLMechanism: c.mechanism,
	}
	// DialTimeout bounds connecting, which includes a broker's first
	// answer: a port that accepts connections but does not speak Kafka
	// (a NATS or PostgreSQL server) would otherwise hold New until the
	// caller's deadline.
	if err := probe(ctx, c.Brokers, c.DialTimeout, c.TLS); err != nil {
		t.release()
		return nil, fmt.Errorf("kafka: connecting to %v: %w", c.Brokers, err)
	}
	pctx, pcancel := context.WithTimeout(ctx, c.DialTimeout)
	_, err = t.client.Metadata(pctx, &kafkago.MetadataRequest{Topics: []string{}})
	timedOut := pctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
	pcancel()
	if err != nil && timedOut {
		t.release()
		return nil, fmt.Errorf("kafka: connecting to %v: %w: no Kafka response within dial_timeout %v (is it a Kafka broker?)", c.Brokers, transport.ErrUnavailable, c.DialTimeout)
	}
	if err != nil {
		t.release()
		err = classify(ctx, err)
		if errors.Is(err, transport.ErrUnavailable) {
			// kafka-go's Transport reports a refused SASL handshake as a
			// closed connection: a direct connection tells which it was.
			if derr := t.diagnose(ctx); derr != nil {
				err = derr
			}
		}
		return nil, fmt.Errorf("kafka: connecting to %v: %w", c.Brokers, err)
	}
	return t, nil
}

// diagnose dials each broker directly (with TLS and SASL) and returns the
// first authentication error, if any.
func (t *Transport) diagnose(ctx context.Context) error {
	for _, b := range t.cfg.Brokers {
		conn, err := t.dialer.DialContext(ctx, "tcp", b)
		if err == nil {
			conn.Close()
			continue
		}
		if err = classify(ctx, err); errors.Is(err, transport.ErrAuthentication) {
			return err
		}
	}
	return nil
}

func (t *Transport) release() {
	t.cancel()
	t.kt.CloseIdleConnections()
	t.conns.closeAll()
}

// Close closes every subscription still open (draining them, together, for
// at most DrainTimeout), then the connections. Publish and Subscribe after Close
// return transport.ErrClosed. Idempotent; concurrent calls wait for the
// first.
func (t *Transport) Close() error { return t.closer.Do(t.close) }

func (t *Transport) close() error {
	t.mu.Lock()
	subs := slices.Collect(maps.Keys(t.subs))
	t.mu.Unlock()
	err := transport.CloseSubscriptions(subs, t.cfg.DrainTimeout, nil)
	t.release()
	return err
}

// MaxMessageBytes is the largest record batch Publish sends
// (Config.MaxMessageBytes): a message whose batch alone, as sent
// (compressed), is larger fails with transport.ErrMessageTooLarge, so a
// caller that builds a message to fit (a dead letter) can shrink it.
func (t *Transport) MaxMessageBytes() int { return t.cfg.MaxMessageBytes }

func errClosed(op string) error { return fmt.Errorf("kafka: %s: %w", op, transport.ErrClosed) }

// partitions returns the topic's partition IDs (0..n-1), creating the
// topic when it is missing and provisioning allows.
func (t *Transport) partitions(ctx context.Context, topic string) ([]int, error) {
	ti, err := t.topic(ctx, topic)
	return ti.ids, err
}

// topic returns what the transport knows of topic, creating the topic when
// it is missing and provisioning allows.
func (t *Transport) topic(ctx context.Context, topic string) (topicInfo, error) {
	t.mu.Lock()
	ti, ok := t.topics[topic]
	t.mu.Unlock()
	if ok && time.Now().Before(ti.expires) {
		return ti, nil
	}
	leaders, err := t.lookup(ctx, topic, false)
	if err == nil {
		return t.remember(topic, leaders), nil
	}
	if !errors.Is(err, transport.ErrTopicNotFound) {
		return topicInfo{}, err
	}
	if !t.cfg.Topics.Disable {
		if err := t.createTopic(ctx, topic); err != nil {
			return topicInfo{}, err
		}
	}
	// The transport's metadata cache may predate the topic: this request
	// makes it ask the brokers.
	leaders, err = t.lookup(ctx, topic, true)
	if err != nil {
		if errors.Is(err, transport.ErrTopicNotFound) && t.cfg.Topics.Disable {
			return topicInfo{}, fmt.Errorf("%w (creating topics is disabled: Config.Topics.Disable)", err)
		}
		return topicInfo{}, err
	}
	return t.remember(topic, leaders), nil
}

func (t *Transport) remember(topic string, leaders []int32) topicInfo {
	ti := topicInfo{ids: make([]int, len(leaders)), leaders: leaders, expires: time.Now().Add(topicTTL)}
	for i := range ti.ids {
		ti.ids[i] = i
	}
	t.mu.Lock()
	t.topics[topic] = ti
	t.mu.Unlock()
	return ti
}

func (t *Transport) forget(topic string) {
	t.mu.Lock()
	delete(t.topics, topic)
	t.mu.Unlock()
}

// lookup returns the leader of each of topic's partitions. With refresh,
// a topic missing from kafka-go's metadata cache is looked up on the
// brokers (which may create it if they auto-create topics).
func (t *Transport) lookup(ctx context.Context, topic string, refresh bool) ([]int32, error) {
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	res, err := t.kt.RoundTrip(ctx, t.addr, &metadataAPI.Request{TopicNames: []string{topic}, AllowAutoTopicCreation: refresh})
	if err != nil {
		return nil, fmt.Errorf("kafka: metadata of topic %q: %w", topic, classify(ctx, err))
	}
	for _, mt := range res.(*metadataAPI.Response).Topics {
		if mt.Name != topic {
			continue
		}
		if mt.ErrorCode != 0 {
			return nil, fmt.Errorf("kafka: topic %q: %w", topic, classify(ctx, kafkago.Error(mt.ErrorCode)))
		}
		if len(mt.Partitions) == 0 {
			break
		}
		leaders := make([]int32, len(mt.Partitions))
		for _, p := range mt.Partitions {
			if p.PartitionIndex < 0 || int(p.PartitionIndex) >= len(leaders) {
				return nil, fmt.Errorf("kafka: topic %q: metadata names partition %d of %d", topic, p.PartitionIndex, len(leaders))
			}
			leaders[p.PartitionIndex] = p.LeaderID
		}
		return leaders, nil
	}
	return nil, fmt.Errorf("kafka: %w: %q", transport.ErrTopicNotFound, topic)
}

func (t *Transport) createTopic(ctx context.Context, topic string) error {
	return t.createTopicWith(ctx, topic, []kafkago.ConfigEntry{{
		// The broker's limit is the one Publish checks: the record batch
		// as sent.
		ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(t.cfg.MaxMessageBytes),
	}})
}

func (t *Transport) createTopicWith(ctx context.Context, topic string, configs []kafkago.ConfigEntry) error {
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	p, rf := t.cfg.Topics.Partitions, t.cfg.Topics.ReplicationFactor
	if p == 0 {
		p = -1
	}
	if rf == 0 {
		rf = -1
	}
	res, err := t.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{
		Topics: []kafkago.TopicConfig{{Topic: topic, NumPartitions: p, ReplicationFactor: rf, ConfigEntries: configs}},
	})
	if err == nil {
		err = res.Errors[topic]
	}
	if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
		return fmt.Errorf("kafka: creating topic %q: %w", topic, classify(ctx, err))
	}
	return nil
}

func (t *Transport) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, t.cfg.RequestTimeout)
}

// classify wraps a kafka-go or network error with the transport sentinel it
// means. Context errors of ctx are returned as they are.
func classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || isNetTimeout(err)) {
		return ctx.Err()
	}
	var ke kafkago.Error
	if errors.As(err, &ke) {
		switch ke {
		case kafkago.SASLAuthenticationFailed, kafkago.UnsupportedSASLMechanism, kafkago.IllegalSASLState,
			kafkago.TopicAuthorizationFailed, kafkago.GroupAuthorizationFailed, kafkago.ClusterAuthorizationFailed,
			kafkago.TransactionalIDAuthorizationFailed:
			return fmt.Errorf("%w: %w", transport.ErrAuthentication, err)
		case kafkago.MessageSizeTooLarge, kafkago.RecordListTooLarge:
			return fmt.Errorf("%w: %w", transport.ErrMessageTooLarge, err)
		case kafkago.UnknownTopicOrPartition:
			return fmt.Errorf("%w: %w", transport.ErrTopicNotFound, err)
		case kafkago.InvalidTopic:
			return fmt.Errorf("%w: %w", transport.ErrInvalidTopic, err)
		case kafkago.LeaderNotAvailable, kafkago.NotLeaderForPartition, kafkago.BrokerNotAvailable,
			kafkago.RequestTimedOut, kafkago.NotEnoughReplicas, kafkago.NotEnoughReplicasAfterAppend,
			kafkago.GroupCoordinatorNotAvailable, kafkago.NotCoordinatorForGroup, kafkago.NetworkException:
			return fmt.Errorf("%w: %w", transport.ErrUnavailable, err)
		}
		return err
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("%w: %w", transport.ErrUnavailable, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", transport.ErrUnavailable, err)
	}
	return err
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// retriable reports whether a produce error may go away on its own (with
// fresh metadata).
func retriable(err error) bool {
	var ke kafkago.Error
	if errors.As(err, &ke) {
		return ke.Temporary() && ke != kafkago.MessageSizeTooLarge && ke != kafkago.RecordListTooLarge
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, transport.ErrAuthentication), errors.Is(err, transport.ErrMessageTooLarge),
		errors.Is(err, transport.ErrClosed):
		return false
	}
	// Network errors, and kafka-go's routing errors when its metadata is
	// stale ("no leader", "mismatching leaders").
	return true
}
