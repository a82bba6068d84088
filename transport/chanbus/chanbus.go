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
//     caller may reuse it once Publish returned, whatever it returned
//     (Transport is a transport.PublishCopier), and the groups' handlers do
//     not share it. A redelivery hands the handler the same Message value as
//     the failed delivery: changes a handler made to it remain. Once a
//     handler returned nil, its Message (Header map and Body included) is
//     reused for a later message, as the transport contract allows: a
//     handler that keeps any of it must Clone it.
//   - Backpressure: Publish blocks while the shard of a group is full, until
//     its context ends; memory is bounded by shards x buffer messages per
//     group. One exception keeps handlers that publish from deadlocking: a
//     Publish from inside a handler of this transport (its ctx, or one
//     derived from it) waits on a full shard only while a running worker is
//     sure to make room there; when the room could only come from a worker
//     that is itself waiting to publish (its own shard, say: a follow-up with
//     the handler's own key, or a group whose every worker waits), the
//     message is queued beyond the buffer instead. So handlers may publish
//     to their own topic, and groups to each other's, under any load; what
//     such publishes add beyond the buffer is what those handlers publish
//     while every way out is blocked.
//
// # Shutdown
//
// Subscription.Close stops taking messages, lets the running handlers finish
// (until its context ends; then their context is cancelled and Close waits
// for them to return) and, when it was the group's last member, removes the
// group. Transport.Close closes every
// subscription and waits for all of them, cancelling the handlers' context
// once the drain timeout (WithDrainTimeout) has passed; no goroutine outlives
// it. WaitIdle and WaitSettled tell tests when everything published so far
// was handled. A handler that ignores its cancelled context and never returns
// keeps Transport.Close waiting.
//
// A handler that panics does not crash the process: chanbus recovers the
// panic (transport.CallHandler), logs it with its stack at level Error on the
// WithLogger logger, and delivers the message again like any failure (a
// bus.Bus recovers its handlers' panics itself, on its own logger, first). A
// handler that ends its goroutine
// with runtime.Goexit (t.FailNow or t.Fatal in a handler) is logged too and
// its message is delivered again; a new worker goroutine takes the place of
// the one that ended, so the shard and the subscription go on.
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
	"maps"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// Scheme is the URL scheme of chanbus: "chan://".
const Scheme = "chan"

// Defaults of the options.
const (
	// MaxURLQueue bounds buffer x shards in a chan:// URL (a group
	// allocates that many slots when it subscribes); WithBuffer and
	// WithShards take larger values.
	MaxURLQueue       = 1 << 22
	DefaultBuffer     = 64
	DefaultShards     = 16
	DefaultBackoffMin = 10 * time.Millisecond
	DefaultBackoffMax = time.Second
	// DefaultDrainTimeout is how long Transport.Close waits for running
	// handlers before it cancels their context.
	DefaultDrainTimeout = 30 * time.Second
)

// batchPerTurn is how many messages a worker handles from one shard before
// it lets other shards have a turn.
const batchPerTurn = 64

var (
	_ transport.Transport     = (*Transport)(nil)
	_ transport.PublishCopier = (*Transport)(nil)
)

// Option configures a Transport.
type Option func(*config)

type config struct {
	buffer     int
	shards     int
	backoffMin time.Duration
	backoffMax time.Duration
	drain      time.Duration
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
// max, without jitter and without a cap on attempts (a backoff.Policy
// with InitialInterval min and MaxInterval max). Default DefaultBackoffMin (10ms) and DefaultBackoffMax (1s); a min
// of 0 or less means the default, a max below min means min.
func WithBackoff(min, max time.Duration) Option {
	return func(c *config) { c.backoffMin, c.backoffMax = min, max }
}

// WithDrainTimeout sets how long Transport.Close waits for running handlers
// to return before it cancels their context (and then waits for them to
// return). Default DefaultDrainTimeout (30s); values below 0 mean the
// default, 0 cancels at once.
func WithDrainTimeout(d time.Duration) Option {
	return func(c *config) {
		if d >= 0 {
			c.drain = d
		}
	}
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

	closer transport.CloseOnce
	mu     sync.RWMutex
	topics map[string][]*group // copy-on-write slices: Publish reads them without the lock
	subs   map[*subscription]struct{}

	rr       atomic.Uint32 // spreads messages without a key over the shards
	pend     pending       // for WaitIdle and WaitSettled
	unrouted atomic.Uint64 // messages published to a topic without groups
	waits    waits
}

// New returns a Transport. It starts no goroutine until Subscribe.
func New(opts ...Option) *Transport {
	c := newConfig(opts)
	log := c.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Transport{
		cfg:    c,
		log:    log,
		topics: make(map[string][]*group),
		subs:   make(map[*subscription]struct{}),
	}
}

// newConfig applies opts to the defaults.
func newConfig(opts []Option) config {
	c := config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: DefaultDrainTimeout}
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
	return c
}

// Publish queues a copy of each message for every group subscribed to
// topic, blocking while a group's shard is full until ctx ends (but see the
// package documentation for a Publish from inside a handler: it never waits
// for room that only a waiting worker could make). Messages for a topic
// without groups are dropped. It returns ErrClosed after Close.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	t.mu.RLock()
	groups := t.topics[topic]
	t.mu.RUnlock()
	if len(groups) > 0 {
		// The topic is valid: its groups' Subscribe checked it.
		for _, m := range msgs {
			if m == nil {
				return transport.ValidatePublish(topic, msgs) // its error, naming the message
			}
		}
	} else if err := transport.ValidatePublish(topic, msgs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.closer.Closed() {
		return fmt.Errorf("chanbus: publish to %q: %w", topic, transport.ErrClosed)
	}
	if len(groups) == 0 {
		// No group: dropped, as documented, and counted (Stats.Unrouted).
		t.unrouted.Add(uint64(len(msgs)))
		t.log.LogAttrs(ctx, slog.LevelDebug, "chanbus: no group subscribes to the topic; messages dropped",
			slog.String("topic", topic), slog.Int("messages", len(msgs)))
		return nil
	}
	now := time.Now()
	w := t.publisher(ctx)
	for i, m := range msgs {
		if err := t.enqueueAll(ctx, groups, m, topic, now, w); err != nil {
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

// PublishCopies marks the promise of transport.PublishCopier: Publish
// queues copies (Header and Body included) and keeps nothing of the
// caller's messages, whatever it returns.
func (t *Transport) PublishCopies() {}

// enqueueAll queues m for every group. With several groups, no group handles
// it before it was queued for all of them (the deliveries share a gate that
// opens then): otherwise a fast group's handler could publish a follow-up of
// the same key that reaches a slower group before m does, an order a
// broker's log never shows.
func (t *Transport) enqueueAll(ctx context.Context, groups []*group, m *transport.Message, topic string, now time.Time, w *worker) error {
	idx := t.shardOf(m.Key)
	var gate chan struct{}
	if len(groups) > 1 {
		gate = make(chan struct{})
		defer close(gate)
	}
	for _, g := range groups {
		d := newDelivery(m, topic, g.name, now)
		d.gate = gate
		if err := g.enqueue(ctx, d, idx, w); err != nil {
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
		}
		// Most publishers send the same header names every time: overwrite
		// the recycled map's entries, and clear it (then fill it again) only
		// when it holds names that m's Header lacks. The map then holds
		// m.Header's entries exactly, as it holds all of them and no more.
		for k, v := range m.Header {
			header[k] = v
		}
		if len(header) != len(m.Header) {
			clear(header)
			for k, v := range m.Header {
				header[k] = v
			}
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
	if t.closer.Closed() {
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
	t.waits.started(g, workers)
	for range workers {
		w := &worker{s: s}
		w.ctx = context.WithValue(hctx, workerKey{}, w)
		go s.work(w)
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

// Close closes every subscription, waiting for their running handlers (and
// cancelling their context once the drain timeout has passed, see
// WithDrainTimeout), and makes Publish and Subscribe return ErrClosed.
// Idempotent; a concurrent call waits for the first.
func (t *Transport) Close() error { return t.closer.Do(t.close) }

func (t *Transport) close() error {
	t.mu.Lock()
	subs := slices.Collect(maps.Keys(t.subs))
	t.mu.Unlock()
	// A drain that runs out of time is not an error here: there is no
	// broker to redeliver the abandoned messages, and Close has done all
	// it can (see transport.Transport).
	_ = transport.CloseSubscriptions(subs, t.cfg.drain, nil)
	return nil
}

// WaitIdle returns nil once every message published so far has been
// acknowledged (its handler returned nil), dropped (its group was removed),
// or is waiting in retry backoff after a handler error; or ctx's error when
// ctx ends first.
func (t *Transport) WaitIdle(ctx context.Context) error {
	return t.pend.wait(ctx, &t.pend.idle)
}

// WaitSettled returns nil once every message published so far has been
// acknowledged or dropped; unlike WaitIdle it also waits for messages in
// retry backoff to be delivered again and succeed. A message whose handler
// keeps failing keeps it waiting until ctx ends.
func (t *Transport) WaitSettled(ctx context.Context) error {
	return t.pend.wait(ctx, &t.pend.unacked)
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

// pending counts the messages queued or being handled (idle: WaitIdle)
// and those not yet acknowledged or dropped, backoff included (unacked:
// WaitSettled), under one lock, which a message's enqueue and its
// acknowledgement each take once for both.
type pending struct {
	mu            sync.Mutex
	idle, unacked counter
}

type counter struct {
	n       int
	waiters chan struct{} // closed when n drops to 0; nil while nobody waits
}

func (p *pending) add(idle, unacked int) {
	p.mu.Lock()
	p.idle.addLocked(idle)
	p.unacked.addLocked(unacked)
	p.mu.Unlock()
}

func (c *counter) addLocked(k int) {
	c.n += k
	if c.n == 0 && c.waiters != nil {
		close(c.waiters)
		c.waiters = nil
	}
}

// wait waits until c, one of p's counters, is 0.
func (p *pending) wait(ctx context.Context, c *counter) error {
	p.mu.Lock()
	if c.n == 0 {
		p.mu.Unlock()
		return nil
	}
	if c.waiters == nil {
		c.waiters = make(chan struct{})
	}
	ch := c.waiters
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
	running int            // workers of its members not waiting to publish; guarded by t.waits.mu
	timers  sync.WaitGroup // retry timers that may still fire
}

func (t *Transport) newGroup(topic, name string) *group {
	g := &group{t: t, topic: topic, name: name, ready: make(chan *shard, t.cfg.shards), gone: make(chan struct{})}
	g.shards = make([]*shard, t.cfg.shards)
	for i := range g.shards {
		g.shards[i] = &shard{g: g, limit: t.cfg.buffer, buf: make([]*delivery, t.cfg.buffer)}
	}
	return g
}

// enqueue puts d on shard idx, blocking while it is full until ctx ends.
// w is the worker whose handler publishes, or nil: such a publish waits
// only while waits.mayWait says room is sure to come, else it queues d
// beyond the shard's limit. A removed group drops d.
func (g *group) enqueue(ctx context.Context, d *delivery, idx int, w *worker) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.removed {
		return nil
	}
	sh := g.shards[idx]
	g.t.pend.add(1, 1)
	sh.mu.Lock()
	marked := false // w counted as waiting
	defer func() {
		if marked {
			g.t.waits.resume(w)
		}
	}()
	for sh.n >= sh.limit {
		var changed <-chan struct{}
		if w != nil {
			var ok bool
			ok, changed = g.t.waits.mayWait(w, sh, !marked)
			marked = true
			if !ok {
				break // queued beyond the limit: waiting could deadlock
			}
		}
		room := sh.roomChan()
		sh.mu.Unlock()
		select {
		case <-room:
		case <-changed: // a worker started waiting: look again
		case <-ctx.Done():
			g.t.pend.add(-1, -1)
			return ctx.Err()
		case <-g.gone:
			g.t.pend.add(-1, -1)
			if g.t.closer.Closed() {
				return fmt.Errorf("chanbus: publish to %q: %w", g.topic, transport.ErrClosed)
			}
			return nil // the group's last member left: dropped, as documented
		}
		sh.mu.Lock()
	}
	if sh.state == dead {
		sh.mu.Unlock()
		g.t.pend.add(-1, -1)
		return nil
	}
	sh.push(d)
	if sh.state == idle {
		sh.state = busy
		sh.g.ready <- sh
	}
	sh.mu.Unlock()
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
		sh.mu.Lock()
		for sh.pop() != nil {
			dropped++
			counted++
		}
		sh.mu.Unlock()
	}
	if counted > 0 || dropped > 0 {
		g.t.pend.add(-counted, -dropped) // dropped: in backoff or queued, each was unacknowledged
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
	limit int // messages queued before Publish waits (WithBuffer)
	// owner is the worker holding the shard, nil while none does; read by
	// waits.mayWait.
	owner atomic.Pointer[worker]
	retry *delivery // a failed message to deliver before the queue's

	mu sync.Mutex // guards the fields below
	// buf is a ring of n messages from head. It holds limit messages, more
	// only for publishes that must not wait (see enqueue); it shrinks back
	// once empty.
	buf     []*delivery
	head, n int
	room    chan struct{} // closed when a message is taken; nil while no publisher waits
	state   shardState
	timer   *time.Timer
}

// push appends d; sh.mu is held.
func (sh *shard) push(d *delivery) {
	if sh.n == len(sh.buf) {
		buf := make([]*delivery, 2*len(sh.buf))
		for i := range sh.n {
			buf[i] = sh.buf[(sh.head+i)%len(sh.buf)]
		}
		sh.buf, sh.head = buf, 0
	}
	sh.buf[(sh.head+sh.n)%len(sh.buf)] = d
	sh.n++
}

// pop takes the oldest message, or returns nil; sh.mu is held.
func (sh *shard) pop() *delivery {
	if sh.n == 0 {
		return nil
	}
	d := sh.buf[sh.head]
	sh.buf[sh.head] = nil
	sh.head = (sh.head + 1) % len(sh.buf)
	sh.n--
	if sh.n == 0 && len(sh.buf) > sh.limit {
		sh.buf, sh.head = make([]*delivery, sh.limit), 0 // give back what an overflow took
	}
	if sh.room != nil && sh.n < sh.limit {
		close(sh.room)
		sh.room = nil
	}
	return d
}

// roomChan returns the channel closed when a message is taken; sh.mu is
// held.
func (sh *shard) roomChan() chan struct{} {
	if sh.room == nil {
		sh.room = make(chan struct{})
	}
	return sh.room
}

// take makes w the owner of sh, which it received from group.ready.
func (sh *shard) take(w *worker) { sh.owner.Store(w) }

// next returns the owner's next message, or nil after marking the shard
// idle.
func (sh *shard) next() *delivery {
	if d := sh.retry; d != nil {
		sh.retry = nil
		return d
	}
	sh.mu.Lock()
	d := sh.pop()
	if d == nil {
		sh.owner.Store(nil)
		sh.state = idle
	}
	sh.mu.Unlock()
	return d
}

// release hands an owned shard back for another worker.
func (sh *shard) release() {
	sh.owner.Store(nil)
	sh.g.ready <- sh
}

// backoff keeps d at the head of the shard and makes the shard ready again
// after delay.
func (sh *shard) backoff(d *delivery, delay time.Duration) {
	sh.owner.Store(nil)
	sh.mu.Lock()
	sh.retry = d
	sh.state = waiting
	sh.g.timers.Add(1)
	sh.timer = time.AfterFunc(delay, sh.wake)
	sh.mu.Unlock()
	sh.g.t.pend.add(-1, 0) // waiting in backoff counts as idle for WaitIdle
}

func (sh *shard) wake() {
	defer sh.g.timers.Done()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.state != waiting {
		return
	}
	sh.state = busy
	sh.g.t.pend.add(1, 0)
	sh.g.ready <- sh
}

// workerKey is the context key under which a handler's context carries its
// *worker, so that Publish knows it is called from inside a handler.
type workerKey struct{}

// worker is one worker goroutine of a subscription (or the goroutine that
// took its place after a handler's runtime.Goexit).
type worker struct {
	s   *subscription
	ctx context.Context // the handlers' context, carrying the worker
	// cur and sh are the delivery whose handler runs, and its shard: set
	// while the handler runs, so that the goroutine's deferred call sees a
	// handler that ended it with runtime.Goexit.
	cur *delivery
	sh  *shard
	// waiting counts this worker's handler's publishes waiting for room;
	// guarded by t.waits.mu.
	waiting int
}

// publisher returns the worker whose handler called Publish with ctx, or
// nil when ctx is not a handler's context of t.
func (t *Transport) publisher(ctx context.Context) *worker {
	if w, ok := ctx.Value(workerKey{}).(*worker); ok && w.s.t == t {
		return w
	}
	return nil
}

// waits tracks which workers wait inside a handler's Publish (or, before a
// handler, for a message's gate, which its publisher opens once it queued
// the message for every group), so that a publish from a handler never
// waits for room that only waiting workers could make.
//
// A publish from inside a handler may wait for room on a full shard only
// while the shard's owner is a worker that is not waiting to publish (it
// will take a message), or, when nobody owns the shard, while its group has
// a worker that is not waiting (it will come to the shard). Whenever a
// worker starts waiting, every waiting publish looks again (changed). A
// chain of waits therefore always ends at a worker that runs, and no cycle
// of waits can form: no deadlock.
type waits struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced when a worker starts waiting or stops
}

// started counts n new workers of g as running.
func (ws *waits) started(g *group, n int) {
	ws.mu.Lock()
	g.running += n
	ws.mu.Unlock()
}

// stopped counts a worker of g as gone.
func (ws *waits) stopped(g *group) {
	ws.mu.Lock()
	g.running--
	ws.broadcastLocked()
	ws.mu.Unlock()
}

// mayWait reports whether w's handler may wait for room on the full shard
// sh, and returns the channel closed when that should be looked at again.
// With mark it first counts w as waiting (resume undoes it).
func (ws *waits) mayWait(w *worker, sh *shard, mark bool) (bool, <-chan struct{}) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if mark {
		ws.holdLocked(w)
	}
	ok := false
	if o := sh.owner.Load(); o != nil {
		ok = o.waiting == 0
	} else {
		ok = sh.g.running > 0
	}
	if ws.changed == nil {
		ws.changed = make(chan struct{})
	}
	return ok, ws.changed
}

// hold counts w as waiting (for a gate, see subscription.run) until resume.
func (ws *waits) hold(w *worker) {
	ws.mu.Lock()
	ws.holdLocked(w)
	ws.mu.Unlock()
}

func (ws *waits) holdLocked(w *worker) {
	w.waiting++
	if w.waiting == 1 {
		w.s.g.running--
		ws.broadcastLocked()
	}
}

// resume counts w as no longer waiting for one of its publishes.
func (ws *waits) resume(w *worker) {
	ws.mu.Lock()
	w.waiting--
	if w.waiting == 0 {
		w.s.g.running++
	}
	ws.mu.Unlock()
}

func (ws *waits) broadcastLocked() {
	if ws.changed != nil {
		close(ws.changed)
		ws.changed = nil
	}
}

// subscription is one member of a group.
type subscription struct {
	t         *Transport
	g         *group
	h         transport.Handler
	cancel    context.CancelFunc // cancels the handlers' context
	stop      chan struct{}
	stopOnce  sync.Once
	closeOnce sync.Once     // Close
	closeErr  error         // what the first Close returned
	done      chan struct{} // closed after the last worker stopped and left
	live      atomic.Int32  // running workers
}

func (s *subscription) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *subscription) work(w *worker) {
	defer func() {
		if d := w.cur; d != nil {
			// The handler ended this goroutine with runtime.Goexit
			// (CallHandler logged it). Its delivery failed; a new goroutine
			// takes this one's place, so the count of workers holds.
			sh := w.sh
			w.cur, w.sh = nil, nil
			s.failed(w.ctx, sh, d, transport.ErrHandlerGoexit)
			go s.work(w)
			return
		}
		s.t.waits.stopped(s.g)
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
			sh.take(w)
			s.run(w, sh)
		}
	}
}

// run handles messages of the owned shard sh until it is empty, a handler
// fails, the turn is over or the subscription stops.
func (s *subscription) run(w *worker, sh *shard) {
	ctx := w.ctx
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
			default:
				// Its publisher is still queueing it for other groups, and
				// may be waiting for room this worker would make: count
				// this worker as waiting meanwhile (see waits).
				s.t.waits.hold(w)
				select {
				case <-d.gate:
				case <-ctx.Done(): // closing hard: the handler sees the cancelled ctx
				}
				s.t.waits.resume(w)
			}
			d.gate = nil
		}
		d.attempt++
		d.msg.Attempt = d.attempt
		w.cur, w.sh = d, sh
		err := transport.CallHandler(ctx, s.t.log, s.h, &d.msg)
		w.cur, w.sh = nil, nil
		if err != nil {
			s.failed(ctx, sh, d, err)
			return
		}
		d.recycle()
		s.t.pend.add(-1, -1)
	}
}

// failed puts d back at the head of the owned shard sh, to be delivered
// again after its backoff.
func (s *subscription) failed(ctx context.Context, sh *shard, d *delivery, err error) {
	delay := s.t.backoffDelay(d.attempt)
	s.t.log.LogAttrs(ctx, slog.LevelDebug, "chanbus: handler failed; will redeliver",
		slog.String("topic", s.g.topic), slog.String("group", s.g.name), slog.String("id", d.msg.ID),
		slog.Int("attempt", d.attempt), slog.Duration("backoff", delay), slog.Any("error", err))
	sh.backoff(d, delay)
}

func (t *Transport) backoffDelay(attempt int) time.Duration {
	return backoff.Policy{InitialInterval: t.cfg.backoffMin, MaxInterval: t.cfg.backoffMax}.Delay(attempt)
}

// Close stops taking messages and waits for the running handlers to
// return. When ctx ends first, it cancels their context, waits for them to
// return (abandoned: a failed delivery, not acknowledged) and returns ctx's
// error, as the package transport contract says. When this was the group's
// last member, the group and its queued messages are dropped. Idempotent:
// every call returns what the first one to return did.
func (s *subscription) Close(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	var err error
	select {
	case <-s.done:
	default:
		// Each caller waits with its own ctx, so that Transport.Close's
		// drain timeout holds while a user's Close waits too.
		select {
		case <-s.done:
		case <-ctx.Done():
			s.cancel()
			<-s.done
			err = ctx.Err()
		}
	}
	s.closeOnce.Do(func() { s.closeErr = err })
	return s.closeErr
}

// urlShape is the shape of "chan://" URLs: no host, no user, no path.
var urlShape = transport.URLShape{Scheme: Scheme, HostHint: "chan:// takes no host (write chan:// or chan://?buffer=64)",
	NoUser: true, PathHint: "chan:// takes no path"}

// Opener returns the opener of "chan://" URLs, for a transport.Mux. Query
// options: buffer (WithBuffer), shards (WithShards), backoff_min and
// backoff_max (WithBackoff, as Go durations: "10ms"), drain_timeout
// (WithDrainTimeout); unknown options,
// a host or a path are errors.
func Opener() transport.Opener { return &URLOpener{} }

// URLOpener opens "chan://" URLs (see Opener) with settings a URL cannot
// carry. Its zero value opens URLs as Opener's does. Every transport has
// an opener of this shape (Logger, and TLS and defaults where they apply),
// so that busway.NewMux can give them all the same logger.
type URLOpener struct {
	// Logger is the WithLogger of the transports it opens. Default nil:
	// discard.
	Logger *slog.Logger
	// Options are the defaults of the transports it opens: the URL's
	// options override them. Default none.
	Options []Option
}

// OpenTransport parses u as Opener does and calls New with o.Options, the
// URL's options and o.Logger, in that order.
func (o *URLOpener) OpenTransport(ctx context.Context, u *url.URL) (transport.Transport, error) {
	var extra []Option
	if o.Logger != nil {
		extra = append(extra, WithLogger(o.Logger))
	}
	return openWith(u, o.Options, extra...)
}

func openWith(u *url.URL, defaults []Option, extra ...Option) (transport.Transport, error) {
	if err := transport.CheckURL(u, urlShape); err != nil {
		return nil, err
	}
	def := newConfig(defaults)
	q := transport.NewQuery(u)
	buffer := q.Int("buffer", def.buffer)
	if buffer < 1 {
		q.Fail("buffer", fmt.Errorf("%w: %d, want at least 1", transport.ErrInvalidURL, buffer))
	}
	shards := q.Int("shards", def.shards)
	if shards < 1 {
		q.Fail("shards", fmt.Errorf("%w: %d, want at least 1", transport.ErrInvalidURL, shards))
	}
	bmin := q.Duration("backoff_min", def.backoffMin)
	if bmin <= 0 {
		q.Fail("backoff_min", fmt.Errorf("%w: %v, want more than 0", transport.ErrInvalidURL, bmin))
	}
	bmax := q.Duration("backoff_max", def.backoffMax)
	if bmax < bmin {
		q.Fail("backoff_max", fmt.Errorf("%w: %v is less than backoff_min %v", transport.ErrInvalidURL, bmax, bmin))
	}
	if buffer >= 1 && shards >= 1 && (buffer > MaxURLQueue || shards > MaxURLQueue || buffer*shards > MaxURLQueue) {
		// Each group allocates shards x buffer slots at Subscribe: a typo
		// in a URL must not become an allocation that kills the process.
		q.Fail("buffer", fmt.Errorf("%w: buffer %d x shards %d is more than %d queued messages per group", transport.ErrInvalidURL, buffer, shards, MaxURLQueue))
	}
	drain := q.Duration("drain_timeout", def.drain)
	if drain < 0 {
		q.Fail("drain_timeout", fmt.Errorf("%w: %v is negative", transport.ErrInvalidURL, drain))
	}
	if err := q.Err(); err != nil {
		return nil, err
	}
	opts := append(slices.Clip(defaults), WithBuffer(buffer), WithShards(shards), WithBackoff(bmin, bmax), WithDrainTimeout(drain))
	return New(append(opts, extra...)...), nil
}
