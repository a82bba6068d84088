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

// MaxHeld caps the messages one subscription holds, received from the
// server and not yet finished (queued for a worker or being handled). The
// default is min(max(64, 2*Concurrency), max(MaxAckPending/8,
// Concurrency)), at most MaxAckPending: enough to keep the workers busy,
// small enough that a member that dies takes few messages with it (they
// come back after AckWait, see the package doc) and that several dead
// members cannot fill MaxAckPending and stall the group.
func MaxHeld(n int) SubscribeOption {
	return SubscribeOption{"MaxHeld", func(s *subSettings) error {
		if n <= 0 {
			return fmt.Errorf("MaxHeld %d is not positive", n)
		}
		s.maxHeld = n
		return nil
	}}
}

type subSettings struct {
	ackWait       time.Duration
	maxDeliver    int
	nakDelays     []time.Duration
	maxAckPending int
	maxHeld       int
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
	w := opts.Workers()
	if ss.maxAckPending == 0 {
		ss.maxAckPending = max(1000, 64*w)
	}
	if ss.maxHeld == 0 {
		ss.maxHeld = min(max(64, 2*w), max(ss.maxAckPending/8, w))
	}
	if ss.maxHeld > ss.maxAckPending {
		return nil, fmt.Errorf("%w: nats: MaxHeld %d is above MaxAckPending %d (the server would never hand out that many)",
			transport.ErrInvalidOptions, ss.maxHeld, ss.maxAckPending)
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
		cons:   cons,
		slots:  make([]slot, workers),
		queues: make([][]*held, workers),
		wake:   make([]chan struct{}, workers),
		held:   make(map[*held]struct{}, ss.maxHeld),
		room:   make(chan struct{}, 1), // a pending "a message finished"; more would say nothing new
		lost:   make(chan struct{}, 1), // a pending "consumer lost" signal; more would say nothing new
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	sub.ackFloor.Store(cons.CachedInfo().AckFloor.Stream)
	for i := range sub.wake {
		sub.wake[i] = make(chan struct{}, 1) // a pending wake-up; more would say nothing new
	}
	t.mu.Lock()
	if t.closed.Load() {
		t.mu.Unlock()
		cancel()
		return nil, t.errClosed("Subscribe")
	}
	t.subs[sub] = struct{}{}
	t.mu.Unlock()
	sub.workers.Add(workers)
	for i := range workers {
		go sub.work(i)
	}
	sub.wg.Add(2)
	go sub.pull()
	go sub.progress()
	return sub, nil
}

// fetchWait is how long one pull request waits on the server for
// messages before the subscription asks again.
const fetchWait = 5 * time.Second

// pull fetches messages while the subscription runs, never more than
// there is room for: what a subscription holds is bounded by MaxHeld,
// and every message it holds is in the held set, which progress keeps in
// progress on the server. Nothing waits unseen in a client buffer.
func (s *subscription) pull() {
	defer s.wg.Done()
	refill := max(1, s.ss.maxHeld/2)
	backoff := time.Duration(0)
	for {
		// Wait until at least half the room is free (or nothing is held).
		var n int
		for {
			s.dmu.Lock()
			h := len(s.held)
			s.dmu.Unlock()
			if n = s.ss.maxHeld - h; n >= refill || h == 0 {
				break
			}
			select {
			case <-s.room:
			case <-s.stop:
				return
			}
		}
		s.ccMu.Lock()
		if s.closing.Load() {
			s.ccMu.Unlock()
			return
		}
		cons := s.cons
		ctx, cancel := context.WithTimeout(context.Background(), fetchWait)
		s.fetchCancel = cancel
		s.ccMu.Unlock()
		batch, err := cons.Fetch(n, jetstream.FetchContext(ctx))
		if err == nil {
			for m := range batch.Messages() {
				s.accept(m)
			}
			err = batch.Error()
		}
		cancel()
		if err == nil || s.closing.Load() || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			backoff = 0
			continue
		}
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			select {
			case s.lost <- struct{}{}:
			default:
			}
		}
		s.t.log.Warn("nats: fetch", "topic", s.topic, "group", s.group, "error", err)
		// Wait a little before asking again: the server is away or
		// refused the request (a lost consumer is recreated meanwhile).
		backoff = min(max(2*backoff, 50*time.Millisecond), 2*time.Second)
		tm := time.NewTimer(backoff)
		select {
		case <-tm.C:
		case <-s.stop:
			tm.Stop()
			return
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
	// hctx is the handlers' context, cancelled when Close gives up waiting.
	hctx   context.Context
	cancel context.CancelFunc

	ccMu        sync.Mutex
	cons        jetstream.Consumer // replaced when a lost consumer is recreated
	fetchCancel context.CancelFunc // ends the pull request in progress
	lost        chan struct{}
	ackFloor    atomic.Uint64 // the consumer's ack floor (stream sequence), last seen

	// dmu guards the held messages and the workers' queues.
	dmu      sync.Mutex
	held     map[*held]struct{} // received and not finished, at most MaxHeld
	queues   [][]*held          // per worker: its messages not yet started, in stream order
	qclosed  bool               // no more messages are queued; workers exit when idle
	handback []jetstream.Msg    // received while closing; at most one pull batch
	wake     []chan struct{}    // per worker: its queue grew or closed
	room     chan struct{}      // a held message finished

	closing atomic.Bool
	running sync.WaitGroup // messages received and not yet acked or naked
	workers sync.WaitGroup
	slots   []slot // per worker: the Message its handler gets
	stop    chan struct{}
	wg      sync.WaitGroup // pull and progress
	once    sync.Once
	done    chan struct{}
	err     error
}

// held is a message the subscription holds: queued or being handled.
type held struct {
	m     jetstream.Msg
	since time.Time // when received or last reported in progress
}

// slot holds the Message a worker's handler gets, reused from one message
// to the next with its maps (transport.Message allows that: a handler must
// not keep it), which spares the allocations per message.
type slot struct {
	m         transport.Message
	hdr, meta map[string]string
}

// accept takes a received message into the held set and queues it on the
// worker of its key (the shortest queue when it has none). It never blocks:
// pull asked for no more than there is room for.
func (s *subscription) accept(m jetstream.Msg) {
	s.dmu.Lock()
	if s.closing.Load() {
		// Received while Close began: Close hands it back (Nak) once the
		// pull request is over, so that the server gives it to another
		// member (or the next subscription) at once. A Nak now could have
		// it redelivered to this pull request, where it would wait for
		// AckWait.
		s.handback = append(s.handback, m)
		s.dmu.Unlock()
		return
	}
	h := &held{m: m, since: time.Now()}
	s.held[h] = struct{}{}
	w := 0
	if len(s.queues) > 1 {
		key := ""
		if hdr := m.Headers(); hdr != nil {
			if v := hdr[wireKeyHeader]; len(v) > 0 {
				key = v[0]
			}
		}
		if key != "" {
			f := fnv.New32a()
			f.Write([]byte(key))
			w = int(f.Sum32() % uint32(len(s.queues)))
		} else {
			for i := range s.queues {
				if len(s.queues[i]) < len(s.queues[w]) {
					w = i
				}
			}
		}
	}
	s.queues[w] = append(s.queues[w], h)
	// Counted under dmu while not closing, so every Add happens before
	// Close waits.
	s.running.Add(1)
	s.dmu.Unlock()
	select {
	case s.wake[w] <- struct{}{}:
	default:
	}
}

// work runs worker i: the messages of its queue, one at a time, in order.
func (s *subscription) work(i int) {
	running := false // a handler runs on this goroutine
	defer func() {
		if running {
			// The handler called runtime.Goexit (t.FailNow in a test, say):
			// this goroutine is ending and nothing can stop that. handle
			// settled the message as failed (transport.CallHandler logged
			// it); a new goroutine takes this worker's place.
			go s.work(i)
			return
		}
		s.workers.Done()
	}()
	for {
		s.dmu.Lock()
		for len(s.queues[i]) == 0 && !s.qclosed {
			s.dmu.Unlock()
			<-s.wake[i]
			s.dmu.Lock()
		}
		if len(s.queues[i]) == 0 {
			s.dmu.Unlock()
			return
		}
		h := s.queues[i][0]
		s.queues[i][0] = nil
		s.queues[i] = s.queues[i][1:]
		s.dmu.Unlock()
		running = true
		s.handle(s.hctx, &s.slots[i], h)
		running = false
	}
}

// handle runs the handler on one message and acks, naks or terminates it.
func (s *subscription) handle(ctx context.Context, sl *slot, h *held) {
	defer s.release(h)
	jm := h.m
	if s.closing.Load() && ctx.Err() != nil {
		s.nak(jm, 0)
		return
	}
	m := sl.fill(s, jm)
	attempt, id := m.Attempt, m.ID
	returned := false
	defer func() {
		if !returned { // runtime.Goexit in the handler: a failed delivery
			s.settle(jm, attempt, id, transport.ErrHandlerGoexit)
		}
	}()
	err := transport.CallHandler(ctx, s.t.log, s.h, m)
	returned = true
	s.settle(jm, attempt, id, err)
}

// settle acks, naks or terminates a message whose handler returned err.
func (s *subscription) settle(jm jetstream.Msg, attempt int, id string, err error) {
	switch {
	case err == nil:
		if aerr := jm.Ack(); aerr != nil {
			// Not acked: the server redelivers after AckWait (at-least-once).
			s.t.log.Warn("nats: ack", "topic", s.topic, "group", s.group, "id", id, "error", aerr)
		}
	case s.ss.maxDeliver > 0 && attempt >= s.ss.maxDeliver:
		// The server will not deliver it again: terminate it, so that it
		// stops holding the consumer's ack floor (it stays in the stream).
		s.t.log.Error("nats: message failed on its last delivery (MaxDeliver) and is terminated; it stays in the stream but is not delivered to this group again",
			"topic", s.topic, "group", s.group, "id", id, "attempt", attempt, "max_deliver", s.ss.maxDeliver, "error", err)
		// Plain Term: nats-server 2.9 ignores a Term with a reason.
		if terr := jm.Term(); terr != nil {
			s.t.log.Warn("nats: term", "topic", s.topic, "group", s.group, "id", id, "error", terr)
		}
	default:
		s.nak(jm, s.ss.nakDelay(attempt))
	}
}

// release drops a finished message from the held set.
func (s *subscription) release(h *held) {
	s.dmu.Lock()
	delete(s.held, h)
	s.dmu.Unlock()
	select {
	case s.room <- struct{}{}:
	default:
	}
	s.running.Done()
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

// progress runs while the subscription does: every message it holds,
// waiting in a queue or being handled, is reported in progress to the
// server once it was held for a quarter of AckWait, so that nothing the
// subscription holds is redelivered meanwhile; and it watches the
// consumer, recreating it when it was lost (deleted by an operator, or
// gone with a server that keeps no state) from the last ack floor it saw,
// so nothing unacked is skipped.
func (s *subscription) progress() {
	defer s.wg.Done()
	every := max(s.ss.ackWait/4, 10*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var due []jetstream.Msg
	for {
		select {
		case <-s.stop:
			return
		case <-s.lost:
			s.recreate()
			continue
		case <-tick.C:
		}
		now := time.Now()
		due = due[:0]
		s.dmu.Lock()
		for h := range s.held {
			if now.Sub(h.since) >= every {
				h.since = now
				due = append(due, h.m)
			}
		}
		s.dmu.Unlock()
		for _, m := range due {
			if err := m.InProgress(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
				s.t.log.Warn("nats: in-progress", "topic", s.topic, "group", s.group, "error", err)
			}
		}
		clear(due)
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
// seen, and has pull use it, retrying with backoff until it works or Close.
func (s *subscription) recreate() {
	backoff := 100 * time.Millisecond
	for !s.closing.Load() {
		start := s.ackFloor.Load() + 1
		ctx, cancel := context.WithTimeout(context.Background(), s.t.s.PublishTimeout)
		cons, err := s.t.ensureConsumer(ctx, s.topic, s.opts, s.ss, start)
		cancel()
		if err == nil {
			s.ccMu.Lock()
			s.cons = cons
			if s.fetchCancel != nil {
				s.fetchCancel() // the pull request to the lost consumer
			}
			s.ccMu.Unlock()
			s.t.log.Warn("nats: consumer was lost and is recreated", "topic", s.topic, "group", s.group,
				"consumer", s.ss.durable, "from_sequence", start)
			return
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

// Close stops pulling, hands back received messages that arrived as it
// began, lets the workers finish their queued and running messages until
// ctx ends (then cancels the handlers' context and hands back what did not
// start), acks what succeeded and flushes the acks to the server.
// Idempotent; concurrent calls wait for the first.
func (s *subscription) Close(ctx context.Context) error {
	s.once.Do(func() {
		s.dmu.Lock()
		s.closing.Store(true)
		s.dmu.Unlock()
		s.ccMu.Lock()
		if s.fetchCancel != nil {
			s.fetchCancel()
		}
		s.ccMu.Unlock()
		var ctxErr error
		giveUp := func() {
			if ctxErr == nil {
				ctxErr = ctx.Err()
				s.cancel() // the handlers see their context end
			}
		}
		// Stop pull (its request is over once it returns) and progress
		// only after the workers: progress keeps the queued messages in
		// progress while they wait.
		finished := make(chan struct{})
		go func() {
			s.dmu.Lock()
			s.qclosed = true
			s.dmu.Unlock()
			for _, w := range s.wake {
				select {
				case w <- struct{}{}:
				default:
				}
			}
			s.workers.Wait()
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
		s.dmu.Lock()
		for _, m := range s.handback {
			s.nak(m, 0)
		}
		s.handback = nil
		s.dmu.Unlock()
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
