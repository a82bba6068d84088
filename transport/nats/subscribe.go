package nats

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/internal/keyed"
	"github.com/busway/busway/transport"
)

// SubscribeOption is a NATS-specific subscribe option, passed in
// transport.SubscribeOptions.Specific. Other transports ignore it.
type SubscribeOption struct {
	name  string
	apply func(*subSettings) error
}

// Transport returns "nats".
func (SubscribeOption) Transport() string { return Scheme }

func (o SubscribeOption) String() string { return "nats." + o.name }

// AckWait overrides Config.AckWait for one subscription's consumer.
func AckWait(d time.Duration) SubscribeOption {
	return SubscribeOption{"AckWait", func(s *subSettings) error {
		if d <= 0 {
			return fmt.Errorf("AckWait %v is not positive", d)
		}
		s.ackWait = d
		return nil
	}}
}

// MaxDeliver overrides Config.MaxDeliver (-1: unlimited).
func MaxDeliver(n int) SubscribeOption {
	return SubscribeOption{"MaxDeliver", func(s *subSettings) error {
		if n == 0 || n < -1 {
			return fmt.Errorf("MaxDeliver %d is neither positive nor -1 (unlimited)", n)
		}
		s.maxDeliver = n
		return nil
	}}
}

// NakDelays overrides Config.NakDelays: the delays before redelivering a
// message whose handler failed, by attempt; the last repeats.
func NakDelays(d ...time.Duration) SubscribeOption {
	return SubscribeOption{"NakDelays", func(s *subSettings) error {
		if len(d) == 0 {
			return errors.New("NakDelays needs at least one delay")
		}
		for i, v := range d {
			if v < 0 {
				return fmt.Errorf("NakDelays[%d] %v is negative", i, v)
			}
		}
		s.nakDelays = d
		return nil
	}}
}

// MaxAckPending overrides the default max(1000, 64*Concurrency) of
// Config.MaxAckPending.
func MaxAckPending(n int) SubscribeOption {
	return SubscribeOption{"MaxAckPending", func(s *subSettings) error {
		if n <= 0 {
			return fmt.Errorf("MaxAckPending %d is not positive", n)
		}
		s.maxAckPending = n
		return nil
	}}
}

// Durable sets the consumer's durable name instead of the one derived
// from group and topic ("<group>_<topic>_<hash>"), for example to take
// over a consumer made by other tools. It must not be shared between
// topics.
func Durable(name string) SubscribeOption {
	return SubscribeOption{"Durable", func(s *subSettings) error {
		if p := nameProblem(name); p != "" {
			return fmt.Errorf("Durable %q is not a consumer name: %s", name, p)
		}
		s.durable = name
		return nil
	}}
}

type subSettings struct {
	ackWait       time.Duration
	maxDeliver    int
	nakDelays     []time.Duration
	maxAckPending int
	durable       string
}

func (t *Transport) subSettings(topic string, opts transport.SubscribeOptions) (*subSettings, error) {
	s := t.s
	ss := &subSettings{ackWait: s.AckWait, maxDeliver: s.MaxDeliver, nakDelays: s.NakDelays, maxAckPending: s.MaxAckPending}
	for i, o := range opts.Specific {
		if o == nil || o.Transport() != Scheme {
			continue
		}
		so, ok := o.(SubscribeOption)
		if !ok || so.apply == nil {
			return nil, fmt.Errorf("%w: nats: Specific[%d] is a %T, not a nats.SubscribeOption", transport.ErrInvalidOptions, i, o)
		}
		if err := so.apply(ss); err != nil {
			return nil, fmt.Errorf("%w: nats: %v", transport.ErrInvalidOptions, err)
		}
	}
	if ss.maxAckPending == 0 {
		ss.maxAckPending = max(1000, 64*opts.Workers())
	}
	if err := checkBackOff(s.BackOff, ss.maxDeliver); err != nil {
		return nil, err
	}
	if ss.durable == "" {
		ss.durable = durableName(opts.Group, topic)
	}
	return ss, nil
}

// durableName derives a consumer name from group and topic: one stream
// holds every topic, so a group needs one consumer per topic. '.' is not
// allowed in consumer names; the hash keeps names that differ only there
// (or in a truncated tail) apart.
func durableName(group, topic string) string {
	h := fnv.New32a()
	h.Write([]byte(group))
	h.Write([]byte{0})
	h.Write([]byte(topic))
	clean := func(s string) string {
		if len(s) > 100 {
			s = s[:100]
		}
		return strings.ReplaceAll(s, ".", "_")
	}
	return fmt.Sprintf("%s_%s_%08x", clean(group), clean(topic), h.Sum32())
}

// Subscribe creates or updates the group's durable pull consumer on
// topic's subject and consumes it in the background: a handler that
// returns nil gets its message acked, an error gets it Nak'ed with the
// NakDelays delay. Messages with the same Key run one at a time in order;
// up to Concurrency run at once. It returns once the consumer exists, so a
// message published afterwards is delivered even with StartLatest.
func (t *Transport) Subscribe(ctx context.Context, topic string, h transport.Handler, opts transport.SubscribeOptions) (transport.Subscription, error) {
	if t.closed.Load() {
		return nil, t.errClosed("Subscribe")
	}
	if err := transport.ValidateSubscribe(topic, h, opts); err != nil {
		return nil, err
	}
	ss, err := t.subSettings(topic, opts)
	if err != nil {
		return nil, err
	}
	cons, err := t.ensureConsumer(ctx, topic, opts, ss, 0)
	if err != nil {
		return nil, err
	}
	workers := opts.Workers()
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sub := &subscription{
		t:      t,
		topic:  topic,
		opts:   opts,
		group:  opts.Group,
		h:      h,
		ss:     ss,
		hctx:   hctx,
		cancel: cancel,
		slots:  make([]slot, workers),
		free:   make(chan int, workers), // one token per worker slot: never blocks
		lost:   make(chan struct{}, 1),  // a pending "consumer lost" signal; more would say nothing new
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	sub.ackFloor.Store(cons.CachedInfo().AckFloor.Stream)
	for i := range workers {
		sub.free <- i
	}
	if workers > 1 {
		// Depth 2: a worker has its next message ready while the callback
		// moves on to other keys; memory is bounded by MaxAckPending anyway.
		sub.pool = keyed.New(workers, 2)
	}
	cc, err := sub.consume(cons)
	if err != nil {
		cancel()
		if sub.pool != nil {
			sub.pool.Close()
		}
		return nil, err
	}
	sub.cc, sub.cons = cc, cons
	t.mu.Lock()
	if t.closed.Load() {
		// Close ran meanwhile and did not see this subscription.
		t.mu.Unlock()
		cctx, ccancel := context.WithTimeout(context.Background(), t.s.ConnectTimeout)
		_ = sub.Close(cctx)
		ccancel()
		return nil, t.errClosed("Subscribe")
	}
	t.subs[sub] = struct{}{}
	t.mu.Unlock()
	sub.wg.Add(1)
	go sub.progress()
	return sub, nil
}

// consume starts pulling from cons into the subscription's handlers.
func (s *subscription) consume(cons jetstream.Consumer) (jetstream.ConsumeContext, error) {
	batch := min(s.ss.maxAckPending, 500)
	cc, err := cons.Consume(func(m jetstream.Msg) { s.receive(s.hctx, m) },
		jetstream.PullMaxMessages(batch),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				select {
				case s.lost <- struct{}{}:
				default:
				}
			}
			s.t.log.Warn("nats: consume", "topic", s.topic, "group", s.group, "error", err)
		}))
	if err != nil {
		return nil, s.t.apiError("consume "+s.ss.durable, err)
	}
	return cc, nil
}

// ensureConsumer creates the group's consumer or updates it, keeping the
// deliver policy of an existing one (the server does not allow changing it).
//
// A startSeq above 0 recreates a lost consumer from that stream sequence.
func (t *Transport) ensureConsumer(ctx context.Context, topic string, opts transport.SubscribeOptions, ss *subSettings, startSeq uint64) (jetstream.Consumer, error) {
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	cfg := jetstream.ConsumerConfig{
		Durable:       ss.durable,
		Description:   fmt.Sprintf("busway group %q on topic %q", opts.Group, topic),
		FilterSubject: t.s.subjectBase + topic,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ss.ackWait,
		MaxDeliver:    ss.maxDeliver,
		BackOff:       t.s.BackOff,
		MaxAckPending: ss.maxAckPending,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
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

type subscription struct {
	t     *Transport
	topic string
	opts  transport.SubscribeOptions
	group string
	h     transport.Handler
	ss    *subSettings
	pool  *keyed.Pool // nil with one worker: the handler runs in the callback
	// hctx is the handlers' context, cancelled when Close gives up waiting.
	// It lives here because the consume callback, which nats.go calls,
	// cannot be handed one.
	hctx   context.Context
	cancel context.CancelFunc

	ccMu     sync.Mutex
	cc       jetstream.ConsumeContext // replaced when a lost consumer is recreated
	cons     jetstream.Consumer
	lost     chan struct{}
	ackFloor atomic.Uint64 // the consumer's ack floor (stream sequence), last seen

	closing  atomic.Bool
	hbMu     sync.Mutex
	handback []jetstream.Msg // received while closing; at most one pull batch
	running  sync.WaitGroup  // messages received and not yet acked or naked
	slots    []slot          // the message each running handler works on
	free     chan int        // indexes of idle slots
	stop     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
	done     chan struct{}
	err      error
}

// slot records a running handler's message for progress reports.
//
// A slot also holds the Message its handler gets, reused from one message
// to the next with its maps (transport.Message allows that: a handler must
// not keep it), which spares the allocations per message.
type slot struct {
	mu  sync.Mutex
	msg jetstream.Msg
	gen uint64 // counts messages, to tell a long-running one from the next

	m         transport.Message
	hdr, meta map[string]string
}

// receive runs on the consumer's callback goroutine.
func (s *subscription) receive(ctx context.Context, m jetstream.Msg) {
	s.hbMu.Lock()
	if s.closing.Load() {
		// Buffered but not started when Close began: Close hands it back
		// (Nak) once the pull subscription is gone, so that the server
		// gives it to another member (or the next subscription) at once.
		// A Nak now could have it redelivered to this subscription's
		// still-open pull request, where it would be lost until AckWait.
		s.handback = append(s.handback, m)
		s.hbMu.Unlock()
		return
	}
	// Counted under hbMu while not closing, so every Add happens before
	// Close waits.
	s.running.Add(1)
	s.hbMu.Unlock()
	if s.pool == nil {
		s.handle(ctx, m)
		return
	}
	key := ""
	if h := m.Headers(); h != nil {
		if v := h[wireKeyHeader]; len(v) > 0 {
			key = v[0]
		}
	}
	if err := s.pool.Submit(ctx, key, func() { s.handle(ctx, m) }); err != nil {
		s.nak(m, 0)
		s.running.Done()
	}
}

// handle runs the handler on one message and acks or naks it.
func (s *subscription) handle(ctx context.Context, jm jetstream.Msg) {
	defer s.running.Done()
	if s.closing.Load() && ctx.Err() != nil {
		s.nak(jm, 0)
		return
	}
	i := <-s.free
	sl := &s.slots[i]
	m := sl.fill(s, jm)
	sl.mu.Lock()
	sl.msg = jm
	sl.gen++
	sl.mu.Unlock()
	attempt, id := m.Attempt, m.ID
	err := transport.CallHandler(ctx, s.t.log, s.h, m)
	sl.mu.Lock()
	sl.msg = nil
	sl.mu.Unlock()
	s.free <- i
	if err != nil {
		s.nak(jm, s.ss.nakDelay(attempt))
		return
	}
	if aerr := jm.Ack(); aerr != nil {
		// Not acked: the server redelivers after AckWait (at-least-once).
		s.t.log.Warn("nats: ack", "topic", s.topic, "group", s.group, "id", id, "error", aerr)
	}
}

func (ss *subSettings) nakDelay(attempt int) time.Duration {
	d := ss.nakDelays
	if attempt < 1 {
		attempt = 1
	}
	if attempt > len(d) {
		attempt = len(d)
	}
	return d[attempt-1]
}

func (s *subscription) nak(m jetstream.Msg, d time.Duration) {
	var err error
	if d > 0 {
		err = m.NakWithDelay(d)
	} else {
		err = m.Nak()
	}
	if err != nil {
		s.t.log.Warn("nats: nak", "topic", s.topic, "group", s.group, "error", err)
	}
}

// progress runs while the subscription does: it tells the server that
// handlers running longer than a third of AckWait are still at work (so
// their messages are not redelivered meanwhile), and it watches the
// consumer, recreating it when it was lost (deleted by an operator, or
// gone with a server that keeps no state) from the last ack floor it saw,
// so nothing unacked is skipped.
func (s *subscription) progress() {
	defer s.wg.Done()
	every := s.ss.ackWait / 3
	if every < 10*time.Millisecond {
		every = 10 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	seen := make([]uint64, len(s.slots))
	for {
		select {
		case <-s.stop:
			return
		case <-s.lost:
			s.recreate()
			continue
		case <-tick.C:
		}
		for i := range s.slots {
			sl := &s.slots[i]
			sl.mu.Lock()
			m, gen := sl.msg, sl.gen
			sl.mu.Unlock()
			if m != nil && gen == seen[i] {
				if err := m.InProgress(); err != nil {
					s.t.log.Warn("nats: in-progress", "topic", s.topic, "group", s.group, "error", err)
				}
			}
			seen[i] = gen
		}
		s.check(every)
	}
}

// check reads the consumer's state: its ack floor, or that it is gone.
func (s *subscription) check(timeout time.Duration) {
	if s.closing.Load() || !s.t.nc.IsConnected() {
		return
	}
	s.ccMu.Lock()
	cons := s.cons
	s.ccMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), max(timeout, time.Second))
	defer cancel()
	info, err := cons.Info(ctx)
	switch {
	case err == nil:
		s.ackFloor.Store(info.AckFloor.Stream)
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		select {
		case s.lost <- struct{}{}:
		default:
		}
	}
}

// recreate makes the consumer again, starting after the last ack floor
// seen, and consumes it, retrying with backoff until it works or Close.
func (s *subscription) recreate() {
	backoff := 100 * time.Millisecond
	for !s.closing.Load() {
		start := s.ackFloor.Load() + 1
		ctx, cancel := context.WithTimeout(context.Background(), s.t.s.PublishTimeout)
		cons, err := s.t.ensureConsumer(ctx, s.topic, s.opts, s.ss, start)
		cancel()
		if err == nil {
			s.ccMu.Lock()
			if s.closing.Load() {
				s.ccMu.Unlock()
				return
			}
			s.cc.Stop()
			var cc jetstream.ConsumeContext
			cc, err = s.consume(cons)
			if err == nil {
				s.cc, s.cons = cc, cons
				s.ccMu.Unlock()
				s.t.log.Warn("nats: consumer was lost and is recreated", "topic", s.topic, "group", s.group,
					"consumer", s.ss.durable, "from_sequence", start)
				return
			}
			s.ccMu.Unlock()
		}
		s.t.log.Warn("nats: recreating lost consumer", "topic", s.topic, "group", s.group, "consumer", s.ss.durable, "error", err)
		t := time.NewTimer(backoff)
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// canonical maps the NATS binding's spelling of the CloudEvents attributes
// to the canonical one, so that the common ones cost no allocation.
var canonical = map[string]string{
	"ce-id": transport.HeaderID, "ce-source": transport.HeaderSource, "ce-specversion": transport.HeaderSpecVersion,
	"ce-type": transport.HeaderType, "ce-subject": transport.HeaderSubject, "ce-time": transport.HeaderTime,
	"ce-dataschema": transport.HeaderDataSchema, wireKeyHeader: transport.HeaderPartitionKey,
}

// fill makes the slot's Message the delivery of jm, mapping "ce-" headers
// back to the canonical "ce_" spelling.
func (sl *slot) fill(s *subscription, jm jetstream.Msg) *transport.Message {
	if sl.hdr == nil {
		sl.hdr, sl.meta = make(map[string]string), make(map[string]string, 1)
	}
	clear(sl.hdr)
	clear(sl.meta)
	m := &sl.m
	*m = transport.Message{Topic: s.topic, Group: s.group, Body: jm.Data()}
	for k, vs := range jm.Headers() {
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		if k == headerMsgID {
			m.ID = idOf(jm.Subject(), v)
			continue
		}
		if strings.HasPrefix(k, wirePrefix) {
			if c, ok := canonical[k]; ok {
				k = c
			} else {
				k = transport.HeaderPrefix + k[len(wirePrefix):]
			}
		}
		sl.hdr[k] = v
	}
	if len(sl.hdr) > 0 {
		m.Header = sl.hdr
		m.Key = sl.hdr[transport.HeaderPartitionKey]
		if m.ID == "" {
			// A foreign CloudEvents producer that set no Nats-Msg-Id.
			m.ID = sl.hdr[transport.HeaderID]
		}
	}
	if md, err := jm.Metadata(); err == nil {
		m.Attempt = int(md.NumDelivered)
		m.Time = md.Timestamp
		sl.meta[transport.MetaSequence] = strconv.FormatUint(md.Sequence.Stream, 10)
		m.Meta = sl.meta
	} else {
		m.Attempt = 1
		m.Time = time.Now()
	}
	return m
}

// Close stops pulling, hands back buffered messages that no handler has
// started, lets running handlers finish until ctx ends (then cancels their
// context), acks what succeeded and flushes the acks to the server.
// Idempotent; concurrent calls wait for the first.
func (s *subscription) Close(ctx context.Context) error {
	s.once.Do(func() {
		s.hbMu.Lock()
		s.closing.Store(true)
		s.hbMu.Unlock()
		s.ccMu.Lock()
		cc := s.cc
		s.ccMu.Unlock()
		if s.t.nc.IsConnected() {
			cc.Drain()
		} else {
			// Draining needs the server; without it, buffered messages
			// are dropped here and redelivered after AckWait.
			cc.Stop()
		}
		var ctxErr error
		giveUp := func() {
			if ctxErr == nil {
				ctxErr = ctx.Err()
				s.cancel() // the handlers see their context end
			}
		}
		// Wait until the pull subscription is gone. Without a server
		// that never happens (nats.go waits for a reconnect); then only
		// the running handlers are awaited.
		drained := cc.Closed()
		poll := time.NewTicker(50 * time.Millisecond)
	wait:
		for {
			select {
			case <-drained:
				break wait
			case <-ctx.Done():
				giveUp()
				break wait
			case <-poll.C:
				if !s.t.nc.IsConnected() {
					break wait
				}
			}
		}
		poll.Stop()
		s.hbMu.Lock()
		for _, m := range s.handback {
			s.nak(m, 0)
		}
		s.handback = nil
		s.hbMu.Unlock()
		finished := make(chan struct{})
		go func() {
			if s.pool != nil {
				s.pool.Close()
			}
			s.running.Wait()
			close(finished)
		}()
		select {
		case <-finished:
		case <-ctx.Done():
			giveUp()
			<-finished
		}
		close(s.stop)
		s.wg.Wait()
		s.cancel()
		// Acks are fire-and-forget; a flush round trip makes sure the server
		// has them before Close returns, so a finished message is not
		// redelivered to the next subscription.
		if s.t.nc.IsConnected() {
			fctx, cancel := context.WithTimeout(context.Background(), s.t.s.ConnectTimeout)
			if err := s.t.nc.FlushWithContext(fctx); err != nil {
				s.t.log.Warn("nats: flush acks on close", "topic", s.topic, "group", s.group, "error", err)
			}
			cancel()
		}
		s.t.mu.Lock()
		delete(s.t.subs, s)
		s.t.mu.Unlock()
		s.err = ctxErr
		close(s.done)
	})
	<-s.done
	return s.err
}
