package nats

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// consumerWatch is a subscription's consumer as last seen: its handle,
// replaced when a lost consumer is recreated, and its ack floor, from
// which it is recreated.
type consumerWatch struct {
	s *subscription

	mu       sync.Mutex
	cons     jetstream.Consumer // replaced when a lost consumer is recreated
	lost     chan struct{}      // the consumer is gone: progress recreates it
	ackFloor atomic.Uint64      // the consumer's ack floor (stream sequence), last seen
}

// signalLost tells progress that the consumer is gone.
func (c *consumerWatch) signalLost() {
	select {
	case c.lost <- struct{}{}:
	default:
	}
}

// check reads the consumer's state: its ack floor, or that it is gone.
func (c *consumerWatch) check(timeout time.Duration) {
	s := c.s
	if s.closing.Load() || !s.t.nc.IsConnected() {
		return
	}
	c.mu.Lock()
	cons := c.cons
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), max(timeout, time.Second))
	defer cancel()
	info, err := cons.Info(ctx)
	switch {
	case err == nil:
		c.ackFloor.Store(info.AckFloor.Stream)
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		c.signalLost()
	}
}

// recreateRetry is the pause between attempts to make a lost consumer
// again.
var recreateRetry = backoff.Policy{InitialInterval: 100 * time.Millisecond, MaxInterval: 5 * time.Second}

// recreate makes the consumer again, starting after the last ack floor
// seen, and has pull use it, retrying with backoff until it works or Close.
func (c *consumerWatch) recreate() {
	s := c.s
	for fails := 1; !s.closing.Load(); fails++ {
		start := c.ackFloor.Load() + 1
		ctx, cancel := context.WithTimeout(context.Background(), s.t.s.PublishTimeout)
		cons, err := s.t.ensureConsumer(ctx, s.topic, s.opts, s.ss, start)
		cancel()
		if err == nil {
			c.mu.Lock()
			c.cons = cons
			c.mu.Unlock()
			s.pull.resetPulls() // the pull requests to the lost consumer are gone with it
			s.t.log.Warn("nats: consumer was lost and is recreated", "topic", s.topic, "group", s.group,
				"consumer", s.ss.durable, "from_sequence", start)
			return
		}
		s.t.log.Warn("nats: recreating lost consumer", "topic", s.topic, "group", s.group, "consumer", s.ss.durable, "error", err)
		t := time.NewTimer(recreateRetry.Delay(fails))
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ensureConsumer creates the group's consumer or updates it, keeping the
// deliver policy of an existing one (the server does not allow changing it).
//
// A startSeq above 0 recreates a lost consumer from that stream sequence.
func (t *Transport) ensureConsumer(ctx context.Context, topic string, opts transport.SubscribeOptions, ss *subSettings, startSeq uint64) (jetstream.Consumer, error) {
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	cfg := jetstream.ConsumerConfig{
		Durable:           ss.durable,
		Description:       fmt.Sprintf("busway group %q on topic %q", opts.Group, topic),
		FilterSubject:     t.s.subjectBase + topic,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           ss.ackWait,
		MaxDeliver:        ss.maxDeliver,
		BackOff:           t.s.BackOff,
		MaxAckPending:     ss.maxAckPending,
		InactiveThreshold: ss.inactive,
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		ReplayPolicy:      jetstream.ReplayInstantPolicy,
	}
	if opts.StartFrom == transport.StartEarliest {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	if startSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, startSeq
	}
	existing, err := t.js.Consumer(ctx, t.s.Stream, ss.durable)
	switch {
	case err == nil:
		old := existing.CachedInfo().Config
		if old.FilterSubject != cfg.FilterSubject {
			return nil, fmt.Errorf("%w: nats: consumer %q of stream %q filters %q, not %q (a Durable name used for two topics?)",
				transport.ErrInvalidOptions, ss.durable, t.s.Stream, old.FilterSubject, cfg.FilterSubject)
		}
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("%w: nats: stream %q is gone", transport.ErrTopicNotFound, t.s.Stream)
	default:
		return nil, t.apiError("look up consumer "+ss.durable, err)
	}
	cons, err := t.js.CreateOrUpdateConsumer(ctx, t.s.Stream, cfg)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("%w: nats: stream %q is gone", transport.ErrTopicNotFound, t.s.Stream)
		}
		return nil, t.apiError("create consumer "+ss.durable, err)
	}
	return cons, nil
}
