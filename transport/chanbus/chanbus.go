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
//     level: a dead-letter topic that nobody reads loses what reaches it. A group exists while it has at least one member;
//     when its last member's subscription closes, the group is removed and the
//     messages still queued for it are dropped. StartFrom therefore makes no
//     difference: a new group gets what is published after Subscribe returned.
//   - Every group gets its own copy of every message; within a group the
//     members share the group's queues and each message is handled by one
//     member.
//   - Per (topic, group) there is a fixed set of key shards (WithShards),
//     each a bounded queue (WithBuffer). Messages with the same Key go to the
//     same shard; messages without a Key are spread over the shards. A shard
//     is handled by one worker at a time, so messages of one key are handled
//     one at a time and in publish order, even across several members. A
//     subscription runs Concurrency workers, so at most Concurrency of its
//     handlers run at once (and at most as many keys in parallel as there
//     are shards).
//   - A handler error puts the message back at the head of its shard, to be
//     delivered again after an exponential backoff (WithBackoff); the shard
//     waits meanwhile, so the key's order holds, and other shards go on.
//     Message.Attempt counts the deliveries. There is no limit on attempts:
//     bound them with the Retry and DeadLetter middleware.
//   - Every group sees a topic in one order: with several groups, a message
//     is handled by none of them before it was queued for all, so a
//     follow-up that one group's handler publishes never overtakes its
//     cause in another group.
//   - Publish copies each message (Header and Body) for each group, so the
//     caller may reuse it once Publish returned and the groups' handlers do
//     not share it. A redelivery hands the handler the same Message value as
//     the failed delivery: changes a handler made to it remain. Once a
//     handler returned nil, its Message (Header map and Body included) is
//     reused for a later message, as the transport contract allows: a
//     handler that keeps any of it must Clone it.
//   - Backpressure: Publish blocks while the shard of a group is full, until
//     its context ends; memory is bounded by shards x buffer messages per
//     group.
//
// # Shutdown
//
// Subscription.Close stops taking messages, lets the running handlers finish
// (until its context ends, then their context is cancelled) and, when it was
// the group's last member, removes the group. Transport.Close closes every
// subscription and waits for all of them; no goroutine outlives it. WaitIdle
// and WaitSettled tell tests when everything published so far was handled.
// A handler that never returns keeps Transport.Close waiting. A handler
// that panics does not crash the process: chanbus recovers the panic
// (transport.CallHandler), logs it with its stack at level Error on the
// WithLogger logger, and delivers the message again like any failure (a
// bus.Bus recovers its handlers' panics itself, on its own logger, first).
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
package chanbus

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/busway/busway/transport"
)

// Scheme is the URL scheme of chanbus: "chan://".
const Scheme = "chan"

// Defaults of the options.
const (
	DefaultBuffer     = 64
	DefaultShards     = 16
	DefaultBackoffMin = 10 * time.Millisecond
	DefaultBackoffMax = time.Second
)

// batchPerTurn is how many messages a worker handles from one shard before
// it lets other shards have a turn.
const batchPerTurn = 64

var _ transport.Transport = (*Transport)(nil)

// Option configures a Transport.
type Option func(*config)

type config struct {
	buffer     int
	shards     int
	backoffMin time.Duration
	backoffMax time.Duration
	logger     *slog.Logger
}

// WithBuffer sets how many messages each key shard of a group holds before
// Publish blocks. Default DefaultBuffer (64); values below 1 mean the
// default.
func WithBuffer(n int) Option {
	return func(c *config) {
		if n >= 1 {
			c.buffer = n
		}
	}
}

// WithShards sets the number of key shards per (topic, group): how many
// keys can be handled in parallel at most. Default DefaultShards (16);
// values below 1 mean the default.
func WithShards(n int) Option {
	return func(c *config) {
		if n >= 1 {
			c.shards = n
		}
	}
}

// WithBackoff sets the delay before a failed message is delivered again:
// min after the first failure, doubling with each further failure, at most
// max. Default DefaultBackoffMin (10ms) and DefaultBackoffMax (1s); a min
// of 0 or less means the default, a max below min means min.
func WithBackoff(min, max time.Duration) Option {
	return func(c *config) { c.backoffMin, c.backoffMax = min, max }
}

// WithLogger sets the logger for handler failures and dropped messages.
// Default: nil, which discards.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// Transport is the in-process transport. Safe for concurrent use.
type Transport struct {
	cfg config
	log *slog.Logger

	closed   atomic.Bool   // set under mu
	closedCh chan struct{} // closed when Close has finished
	mu       sync.RWMutex
	topics   map[string][]*group // copy-on-write slices: Publish reads them without the lock
	subs     map[*subscription]struct{}

	rr       atomic.Uint32 // spreads messages without a key over the shards
	pend     pending       // queued or being handled: WaitIdle
	unacked  pending       // not yet acknowledged or dropped, backoff included: WaitSettled
	unrouted atomic.Uint64 // messages published to a topic without groups
}

// New returns a Transport. It starts no goroutine until Subscribe.
func New(opts ...Option) *Transport {
	c := config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.backoffMin <= 0 {
		c.backoffMin = DefaultBackoffMin
	}
	if c.backoffMax < c.backoffMin {
		c.backoffMax = c.backoffMin
	}
	log := c.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Transport{
		cfg:      c,
		log:      log,
		closedCh: make(chan struct{}),
		topics:   make(map[string][]*group),
		subs:     make(map[*subscription]struct{}),
	}
}

// Publish queues a copy of each message for every group subscribed to
// topic, blocking while a group's shard is full until ctx ends. Messages
// for a topic without groups are dropped. It returns ErrClosed after Close.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if err := transport.ValidatePublish(topic, msgs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.closed.Load() {
		return fmt.Errorf("chanbus: publish to %q: %w", topic, transport.ErrClosed)
	}
	t.mu.RLock()
	groups := t.topics[topic]
	t.mu.RUnlock()
	if len(groups) == 0 {
		// No group: dropped, as documented, and counted (Stats.Unrouted).
		t.unrouted.Add(uint64(len(msgs)))
		t.log.LogAttrs(ctx, slog.LevelDebug, "chanbus: no group subscribes to the topic; messages dropped",
			slog.String("topic", topic), slog.Int("messages", len(msgs)))
		return nil
	}
	now := time.Now()
	for i, m := range msgs {
		if err := t.enqueueAll(ctx, groups, m, topic, now); err != nil {
			if i == 0 && len(groups) == 1 {
				return err // nothing was queued
			}
			pe := &transport.PublishError{Topic: topic, Total: len(msgs)}
			for j := i; j < len(msgs); j++ {
				pe.Failures = append(pe.Failures, transport.MessageError{Index: j, ID: msgs[j].ID, Err: err})
			}
			return pe
		}
	}
	return nil
}

// enqueueAll queues m for every group. With several groups, no group handles
// it before it was queued for all of them (the deliveries share a gate that
// opens then): otherwise a fast group's handler could publish a follow-up of
// the same key that reaches a slower group before m does, an order a
// broker's log never shows.
func (t *Transport) enqueueAll(ctx context.Context, groups []*group, m *transport.Message, topic string, now time.Time) error {
	idx := t.shardOf(m.Key)
	var gate chan struct{}
	if len(groups) > 1 {
		gate = make(chan struct{})
		defer close(gate)
	}
	for _, g := range groups {
		d := newDelivery(m, topic, g.name, now)
		d.gate = gate
		if err := g.enqueue(ctx, d, idx); err != nil {
			return err
		}
	}
	return nil
}

// shardOf returns the shard index of key: FNV-1a of the key, or round robin
// for messages without a key.
func (t *Transport) shardOf(key string) int {
	n := uint32(t.cfg.shards)
	if n == 1 {
		return 0
	}
	if key == "" {
		return int(t.rr.Add(1) % n)
	}
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return int(h % n)
}

// deliveries recycles delivery values with their Header maps and Body
// buffers: the transport contract lets a transport reuse a Message once its
// handler returned, and the copy per group is most of Publish's cost.
var deliveries = sync.Pool{New: func() any { return new(delivery) }}

// Limits on what a recycled delivery keeps, so one large message does not
// pin its buffers in the pool.
const (
	maxPooledBody   = 64 << 10
	maxPooledHeader = 64
)

// newDelivery returns a copy of m for group, in a recycled delivery.
func newDelivery(m *transport.Message, topic, group string, now time.Time) *delivery {
	d := deliveries.Get().(*delivery)
	header, body := d.msg.Header, d.msg.Body
	d.msg = transport.Message{ID: m.ID, Key: m.Key, Topic: topic, Group: group, Time: now}
	d.attempt, d.gate = 0, nil
	if m.Header != nil {
		if header == nil {
			header = make(map[string]string, len(m.Header))
		} else {
			clear(header)
		}
		for k, v := range m.Header {
			header[k] = v
		}
		d.msg.Header = header
	}
	if m.Body != nil {
		if body == nil {
			body = make([]byte, 0, len(m.Body))
		}
		d.msg.Body = append(body[:0], m.Body...)
	}
	return d
}

// recycle returns d to the pool once its handler returned nil.
func (d *delivery) recycle() {
	if cap(d.msg.Body) > maxPooledBody {
		d.msg.Body = nil
	}
	if len(d.msg.Header) > maxPooledHeader {
		d.msg.Header = nil
	}
	deliveries.Put(d)
}

// Subscribe joins group opts.Group of topic (creating it when it has no
// member) and starts opts.Workers() workers. StartFrom is accepted and
// ignored: chanbus keeps no history. Transport-specific options of other
// transports are ignored.
func (t *Transport) Subscribe(ctx context.Context, topic string, h transport.Handler, opts transport.SubscribeOptions) (transport.Subscription, error) {
	if err := transport.ValidateSubscribe(topic, h, opts); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	if t.closed.Load() {
		t.mu.Unlock()
		return nil, fmt.Errorf("chanbus: subscribe to %q: %w", topic, transport.ErrClosed)
	}
	var g *group
	groups := t.topics[topic]
	for _, x := range groups {
		if x.name == opts.Group {
			g = x
			break
		}
	}
	if g == nil {
		g = t.newGroup(topic, opts.Group)
		t.topics[topic] = append(slices.Clip(groups), g)
	}
	g.members++
	workers := opts.Workers()
	hctx, cancel := context.WithCancel(context.Background())
	s := &subscription{t: t, g: g, h: h, cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
	s.live.Store(int32(workers))
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	for range workers {
		go s.work(hctx)
	}
	return s, nil
}

// leave removes s from its group after its last worker stopped, and removes
// the group when s was its last member.
func (t *Transport) leave(s *subscription) {
	g := s.g
	t.mu.Lock()
	delete(t.subs, s)
	g.members--
	last := g.members == 0
	if last {
		groups := t.topics[g.topic]
		rest := make([]*group, 0, len(groups))
		for _, x := range groups {
			if x != g {
				rest = append(rest, x)
			}
		}
		if len(rest) == 0 {
			delete(t.topics, g.topic)
		} else {
			t.topics[g.topic] = rest
		}
	}
	t.mu.Unlock()
	if last {
		g.teardown()
	}
}

// Close closes every subscription, waiting for their running handlers, and
// makes Publish and Subscribe return ErrClosed. Idempotent; a concurrent
// call waits for the first.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed.Load() {
		t.mu.Unlock()
		<-t.closedCh
		return nil
	}
	t.closed.Store(true)
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	for _, s := range subs {
		s.stopOnce.Do(func() { close(s.stop) })
	}
	for _, s := range subs {
		<-s.done
	}
	close(t.closedCh)
	return nil
}

// WaitIdle returns nil once every message published so far has been
// acknowledged (its handler returned nil), dropped (its group was removed),
// or is waiting in retry backoff after a handler error; or ctx's error when
// ctx ends first.
func (t *Transport) WaitIdle(ctx context.Context) error {
	return t.pend.wait(ctx)
}

// WaitSettled returns nil once every message published so far has been
// acknowledged or dropped; unlike WaitIdle it also waits for messages in
// retry backoff to be delivered again and succeed. A message whose handler
// keeps failing keeps it waiting until ctx ends.
func (t *Transport) WaitSettled(ctx context.Context) error {
	return t.unacked.wait(ctx)
}

// Stats are counters of a Transport since New.
type Stats struct {
	// Unrouted counts messages published to a topic that no group
	// subscribed to, which chanbus drops (Publish returns nil): a
	// dead-letter topic nobody reads, a typo in a topic name.
	Unrouted uint64
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats { return Stats{Unrouted: t.unrouted.Load()} }

// pending counts the messages queued or being handled, for WaitIdle.
type pending struct {
	mu      sync.Mutex
	n       int
	waiters chan struct{} // closed when n drops to 0; nil while nobody waits
}

func (p *pending) add(k int) {
	p.mu.Lock()
	p.n += k
	if p.n == 0 && p.waiters != nil {
		close(p.waiters)
		p.waiters = nil
	}
	p.mu.Unlock()
}

func (p *pending) wait(ctx context.Context) error {
	p.mu.Lock()
	if p.n == 0 {
		p.mu.Unlock()
		return nil
	}
	if p.waiters == nil {
		p.waiters = make(chan struct{})
	}
	ch := p.waiters
	p.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// delivery is one group's copy of a message.
type delivery struct {
	msg     transport.Message
	attempt int
	gate    <-chan struct{} // nil, or closed once the message is queued for every group
}

// group is the state of one (topic, group): its key shards, shared by its
// members.
type group struct {
	t           *Transport
	topic, name string
	shards      []*shard
	// ready holds the shards that have work and no worker. Its capacity is
	// the number of shards and a shard is in it at most once, so sending
	// never blocks.
	ready chan *shard
	gone  chan struct{} // closed by teardown: unblocks waiting publishers
	// mu: publishers hold it shared while queueing; teardown takes it
	// exclusively, so no message is queued after the group was drained.
	mu      sync.RWMutex
	removed bool
	members int            // guarded by t.mu
	timers  sync.WaitGroup // retry timers that may still fire
}

func (t *Transport) newGroup(topic, name string) *group {
	g := &group{t: t, topic: topic, name: name, ready: make(chan *shard, t.cfg.shards), gone: make(chan struct{})}
	g.shards = make([]*shard, t.cfg.shards)
	for i := range g.shards {
		// Buffered to the configured size: this is the bounded queue whose
		// filling makes Publish block.
		g.shards[i] = &shard{g: g, q: make(chan *delivery, t.cfg.buffer)}
	}
	return g
}

// enqueue puts d on shard idx, blocking while it is full until ctx ends.
// A removed group drops d.
func (g *group) enqueue(ctx context.Context, d *delivery, idx int) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.removed {
		return nil
	}
	sh := g.shards[idx]
	g.t.pend.add(1)
	g.t.unacked.add(1)
	select {
	case sh.q <- d:
	default:
		select {
		case sh.q <- d:
		case <-ctx.Done():
			g.t.pend.add(-1)
			g.t.unacked.add(-1)
			return ctx.Err()
		case <-g.gone:
			g.t.pend.add(-1)
			g.t.unacked.add(-1)
			if g.t.closed.Load() {
				return fmt.Errorf("chanbus: publish to %q: %w", g.topic, transport.ErrClosed)
			}
			return nil // the group's last member left: dropped, as documented
		}
	}
	sh.signal()
	return nil
}

// teardown drops what is still queued for a group with no members. Every
// worker of the group has stopped.
func (g *group) teardown() {
	close(g.gone)
	g.mu.Lock()
	g.removed = true
	g.mu.Unlock()
	dropped, counted := 0, 0
	for _, sh := range g.shards {
		sh.mu.Lock()
		if sh.state == waiting {
			if sh.timer.Stop() {
				g.timers.Done()
			}
			dropped++ // in backoff: not counted as pending
		} else if sh.retry != nil {
			dropped++
			counted++
		}
		sh.state = dead
		sh.retry = nil
		sh.mu.Unlock()
	}
	g.timers.Wait()
	for _, sh := range g.shards {
	drain:
		for {
			select {
			case <-sh.q:
				dropped++
				counted++
			default:
				break drain
			}
		}
	}
	if counted > 0 {
		g.t.pend.add(-counted)
	}
	if dropped > 0 {
		g.t.unacked.add(-dropped) // in backoff or queued: each was unacknowledged
	}
	if dropped > 0 {
		g.t.log.LogAttrs(context.Background(), slog.LevelDebug, "chanbus: group removed; dropped its queued messages",
			slog.String("topic", g.topic), slog.String("group", g.name), slog.Int("dropped", dropped))
	}
}

type shardState uint8

const (
	idle    shardState = iota // no known work, no worker
	busy                      // in group.ready, or owned by a worker
	waiting                   // head message in retry backoff; its timer will make it busy
	dead                      // group torn down
)

// shard is one bounded queue of a group. The worker that took it from
// group.ready owns it (and retry) until it hands it back.
type shard struct {
	g     *group
	q     chan *delivery
	mu    sync.Mutex // guards state and timer
	state shardState
	retry *delivery // a failed message to deliver before q's
	timer *time.Timer
}

// signal makes an idle shard ready after a message was queued.
func (sh *shard) signal() {
	sh.mu.Lock()
	if sh.state == idle {
		sh.state = busy
		sh.g.ready <- sh
	}
	sh.mu.Unlock()
}

// next returns the owner's next message, or nil after marking the shard
// idle.
func (sh *shard) next() *delivery {
	if d := sh.retry; d != nil {
		sh.retry = nil
		return d
	}
	select {
	case d := <-sh.q:
		return d
	default:
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	select {
	case d := <-sh.q: // queued after the first look, before its publisher signalled
		return d
	default:
	}
	sh.state = idle
	return nil
}

// release hands an owned shard back for another worker.
func (sh *shard) release() { sh.g.ready <- sh }

// backoff keeps d at the head of the shard and makes the shard ready again
// after delay.
func (sh *shard) backoff(d *delivery, delay time.Duration) {
	sh.mu.Lock()
	sh.retry = d
	sh.state = waiting
	sh.g.timers.Add(1)
	sh.timer = time.AfterFunc(delay, sh.wake)
	sh.mu.Unlock()
	sh.g.t.pend.add(-1) // waiting in backoff counts as idle for WaitIdle
}

func (sh *shard) wake() {
	defer sh.g.timers.Done()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.state != waiting {
		return
	}
	sh.state = busy
	sh.g.t.pend.add(1)
	sh.g.ready <- sh
}

// subscription is one member of a group.
type subscription struct {
	t        *Transport
	g        *group
	h        transport.Handler
	cancel   context.CancelFunc // cancels the handlers' context
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{} // closed after the last worker stopped and left
	live     atomic.Int32  // running workers
}

func (s *subscription) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *subscription) work(ctx context.Context) {
	defer func() {
		if s.live.Add(-1) == 0 {
			s.t.leave(s)
			s.cancel()
			close(s.done)
		}
	}()
	for !s.stopping() {
		select {
		case <-s.stop:
			return
		case sh := <-s.g.ready:
			s.run(ctx, sh)
		}
	}
}

// run handles messages of the owned shard sh until it is empty, a handler
// fails, the turn is over or the subscription stops.
func (s *subscription) run(ctx context.Context, sh *shard) {
	for n := 0; ; n++ {
		if n == batchPerTurn || s.stopping() {
			sh.release()
			return
		}
		d := sh.next()
		if d == nil {
			return
		}
		if d.gate != nil {
			select {
			case <-d.gate:
			case <-ctx.Done(): // closing hard: the handler sees the cancelled ctx
			}
			d.gate = nil
		}
		d.attempt++
		d.msg.Attempt = d.attempt
		if err := transport.CallHandler(ctx, s.t.log, s.h, &d.msg); err != nil {
			delay := s.t.backoffDelay(d.attempt)
			s.t.log.LogAttrs(ctx, slog.LevelDebug, "chanbus: handler failed; will redeliver",
				slog.String("topic", s.g.topic), slog.String("group", s.g.name), slog.String("id", d.msg.ID),
				slog.Int("attempt", d.attempt), slog.Duration("backoff", delay), slog.Any("error", err))
			sh.backoff(d, delay)
			return
		}
		d.recycle()
		s.t.pend.add(-1)
		s.t.unacked.add(-1)
	}
}

func (t *Transport) backoffDelay(attempt int) time.Duration {
	d := t.cfg.backoffMin
	for i := 1; i < attempt && d < t.cfg.backoffMax; i++ {
		d *= 2
	}
	return min(d, t.cfg.backoffMax)
}

// Close stops taking messages and waits, until ctx ends, for the running
// handlers; then it cancels their context and returns ctx's error. When this
// was the group's last member, the group and its queued messages are
// dropped. Idempotent.
func (s *subscription) Close(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	select {
	case <-s.done:
		return nil
	default:
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		s.cancel()
		return ctx.Err()
	}
}

// Opener returns the opener of "chan://" URLs, for a transport.Mux. Query
// options: buffer (WithBuffer), shards (WithShards), backoff_min and
// backoff_max (WithBackoff, as Go durations: "10ms"); unknown options,
// a host or a path are errors.
func Opener() transport.Opener { return transport.OpenerFunc(open) }

func open(_ context.Context, u *url.URL) (transport.Transport, error) {
	fail := func(part, format string, args ...any) error {
		return &transport.URLError{URL: transport.Redact(u), Part: part, Err: fmt.Errorf("%w: "+format, append([]any{transport.ErrInvalidURL}, args...)...)}
	}
	switch {
	case u.Scheme != Scheme:
		return nil, fail("scheme", "%q is not %q", u.Scheme, Scheme)
	case u.Opaque != "":
		return nil, fail("url", "%q: want chan:// with options in the query", u.Opaque)
	case u.User != nil:
		return nil, fail("userinfo", "chan:// takes no user or password")
	case u.Host != "":
		return nil, fail("host", "%q: chan:// takes no host (write chan:// or chan://?buffer=64)", u.Host)
	case u.Path != "" && u.Path != "/":
		return nil, fail("path", "%q: chan:// takes no path", u.Path)
	}
	q := transport.NewQuery(u)
	buffer := q.Int("buffer", DefaultBuffer)
	if buffer < 1 {
		q.Fail("buffer", fmt.Errorf("%w: %d, want at least 1", transport.ErrInvalidURL, buffer))
	}
	shards := q.Int("shards", DefaultShards)
	if shards < 1 {
		q.Fail("shards", fmt.Errorf("%w: %d, want at least 1", transport.ErrInvalidURL, shards))
	}
	bmin := q.Duration("backoff_min", DefaultBackoffMin)
	if bmin <= 0 {
		q.Fail("backoff_min", fmt.Errorf("%w: %v, want more than 0", transport.ErrInvalidURL, bmin))
	}
	bmax := q.Duration("backoff_max", DefaultBackoffMax)
	if bmax < bmin {
		q.Fail("backoff_max", fmt.Errorf("%w: %v is less than backoff_min %v", transport.ErrInvalidURL, bmax, bmin))
	}
	if err := q.Err(); err != nil {
		return nil, err
	}
	return New(WithBuffer(buffer), WithShards(shards), WithBackoff(bmin, bmax)), nil
}
