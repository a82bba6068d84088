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

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
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
	if t.closer.Closed() {
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
		reset:  make(chan struct{}, 1), // a pending "pull requests are void"; more would say nothing new
		lost:   make(chan struct{}, 1), // a pending "consumer lost" signal; more would say nothing new
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	sub.ackFloor.Store(cons.CachedInfo().AckFloor.Stream)
	for i := range sub.wake {
		sub.wake[i] = make(chan struct{}, 1) // a pending wake-up; more would say nothing new
	}
	if sub.inbox, err = sub.newInbox(); err != nil {
		cancel()
		return nil, err
	}
	t.mu.Lock()
	if t.closer.Closed() {
		t.mu.Unlock()
		cancel()
		_ = sub.inbox.sub.Unsubscribe()
		<-sub.inbox.end
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

// pullExpires is how long one pull request waits on the server for
// messages before it ends (408) and the subscription asks again. While it
// waits with nothing to send, the server sends a heartbeat every
// pullHeartbeat; a request that brings neither messages nor heartbeats for
// pullLost was lost by the server (a consumer leader change, a server that
// went away without a word) and is asked again.
const (
	pullExpires   = 5 * time.Second
	pullHeartbeat = time.Second
	pullLost      = 3 * pullHeartbeat
)

// The JetStream pull protocol, as nats.go speaks it (nats-server 2.9 and
// later): a request {"batch":n,"expires":ns,"idle_heartbeat":ns} published
// to the consumer's "next" subject with an inbox subject as reply; the
// server sends up to n messages there, heartbeats (status 100) while it
// has none, and (unless all n went out) a status message that ends the
// request, with the count of those it did not send.
const (
	apiNext           = "$JS.API.CONSUMER.MSG.NEXT."
	hdrStatus         = "Status"
	hdrDescription    = "Description"
	hdrPendingMsgs    = "Nats-Pending-Messages"
	statusHeartbeat   = "100"
	statusNoMessages  = "404"
	statusTimeout     = "408"
	statusConflict    = "409"
	statusNoResponder = "503"
)

// pull asks the server for messages while the subscription runs, never for
// more than there is room for: what a subscription holds plus what it has
// asked for and not yet received stays within MaxHeld, and every message
// it holds is in the held set, which progress keeps in progress on the
// server. Nothing waits unseen in a client buffer.
//
// Requests go out one at a time, all answered on one inbox subscription
// that lives as long as the subscription: a message the server sends after
// it ended the request (it announces a shutdown before it stops sending)
// is still received and handled, not left to come back after AckWait.
func (s *subscription) pull() {
	defer s.wg.Done()
	refill := max(1, s.ss.maxHeld/2)
	subject := apiNext + s.t.s.Stream + "." + s.ss.durable
	fails := 0 // pull requests refused or lost in a row
	for {
		var wait <-chan time.Time
		var tm *time.Timer
		n := 0
		s.dmu.Lock()
		if s.pullOK {
			fails = 0
		}
		failed := s.pullFailed
		s.pullOK, s.pullFailed = false, false
		now := time.Now()
		s.dropLostPulls(now)
		switch {
		case len(s.pulls) > 0:
			// A request is open, or messages it sent are on their way:
			// wait for them, or for its end to be overdue.
			tm = time.NewTimer(s.pulls[0].seen.Add(pullLost).Sub(now))
			wait = tm.C
		case failed:
		default:
			if h := len(s.held); s.ss.maxHeld-h >= refill || h == 0 {
				n = s.ss.maxHeld - h
			}
		}
		if n > 0 && !s.t.nc.IsConnected() {
			// A request sent now would wait in nats.go's reconnect buffer
			// and reach the server alongside the one sent after the
			// reconnect: wait for the reconnect (resetPulls) instead.
			n = 0
			tm = time.NewTimer(time.Second)
			wait = tm.C
		}
		var reply string
		if n > 0 {
			s.pullSeq++
			reply = s.inbox.prefix + strconv.FormatUint(s.pullSeq, 10)
			s.pulls = append(s.pulls, pullReq{id: s.pullSeq, left: n, seen: now})
		}
		s.dmu.Unlock()
		if failed {
			// The server refused or lost the request: wait a little before
			// asking again (a reconnect or a recreated consumer ends the
			// wait), not at every finished message.
			fails++
			tm = time.NewTimer(pullRetry.Delay(fails))
			select {
			case <-tm.C:
			case <-s.reset:
				fails = 0
			case <-s.stop:
				tm.Stop()
				return
			}
			tm.Stop()
			continue
		}
		if n > 0 {
			if s.closing.Load() {
				return
			}
			req := fmt.Appendf(s.reqBuf[:0], `{"batch":%d,"expires":%d,"idle_heartbeat":%d}`, n, pullExpires.Nanoseconds(), pullHeartbeat.Nanoseconds())
			s.reqBuf = req
			if err := s.t.nc.PublishRequest(subject, reply, req); err != nil {
				s.dmu.Lock()
				s.pulls, s.pullFailed = s.pulls[:0], true
				s.dmu.Unlock()
				s.t.log.Warn("nats: pull request", "topic", s.topic, "group", s.group, "error", err)
			}
			continue
		}
		select {
		case <-s.room:
		case <-s.reset:
			fails = 0
		case <-wait:
		case <-s.stop:
			if tm != nil {
				tm.Stop()
			}
			return
		}
		if tm != nil {
			tm.Stop()
		}
	}
}

// pullInbox is the subscription that receives the answers to pull
// requests: request i is answered on prefix + i.
type pullInbox struct {
	sub    *natsgo.Subscription
	prefix string        // "_INBOX.<nuid>."
	end    chan struct{} // closed when its delivery goroutine is done
}

// newInbox subscribes a new pull inbox.
func (s *subscription) newInbox() (*pullInbox, error) {
	in := &pullInbox{prefix: s.t.nc.NewInbox() + ".", end: make(chan struct{})}
	sub, err := s.t.nc.Subscribe(in.prefix+"*", s.receive)
	if err != nil {
		return nil, s.t.apiError("subscribe to the pull inbox", err)
	}
	sub.SetClosedHandler(func(string) { close(in.end) })
	// What the inbox has received and not yet handed to receive is within
	// what pull asked for, which MaxHeld bounds; nats.go's own limits
	// (512Ki messages, 64 MiB) would drop messages of a large MaxHeld of
	// large messages instead.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		<-in.end
		return nil, s.t.apiError("subscribe to the pull inbox", err)
	}
	in.sub = sub
	return in, nil
}

// closeInbox stops the pull inbox: drained while connected, so that what
// the server sent before it saw the unsubscribe is still received (and
// handed back), within ConnectTimeout; unsubscribed at once otherwise.
func (s *subscription) closeInbox(ctx context.Context) {
	in := s.inbox
	if !s.t.nc.IsConnected() || in.sub.Drain() != nil {
		_ = in.sub.Unsubscribe()
	}
	tm := time.NewTimer(s.t.s.ConnectTimeout)
	defer tm.Stop()
	select {
	case <-in.end:
		return
	case <-ctx.Done():
	case <-tm.C:
	}
	_ = in.sub.Unsubscribe()
	select {
	case <-in.end:
	case <-time.After(5 * time.Second):
		// The connection closed before the closed handler was set: its
		// delivery goroutine is gone already.
	}
}

// receive runs on the inbox subscription's goroutine, for each message
// the server sends there: a message of the stream, or a status about the
// pull request.
func (s *subscription) receive(m *natsgo.Msg) {
	if m.Reply == "" && len(m.Data) == 0 {
		// A stream message always has an ack subject as its reply; a
		// status never does.
		if code := m.Header.Get(hdrStatus); code != "" {
			s.status(code, m)
			return
		}
	}
	if m.Reply == "" {
		s.t.log.Warn("nats: unexpected message on the pull inbox", "topic", s.topic, "group", s.group, "subject", m.Subject)
		return
	}
	s.accept(m)
}

// status takes in a status message: every one but a heartbeat ends the
// pull request; the messages it did not send (Nats-Pending-Messages) are
// no longer awaited.
func (s *subscription) status(code string, m *natsgo.Msg) {
	if code == statusHeartbeat {
		s.dmu.Lock()
		if i := s.pullIndex(m.Subject); i >= 0 {
			s.pulls[i].seen = time.Now()
		}
		s.dmu.Unlock()
		return
	}
	desc := m.Header.Get(hdrDescription)
	pending, err := strconv.Atoi(m.Header.Get(hdrPendingMsgs))
	if err != nil || pending < 0 {
		pending = -1 // unknown: nothing more is awaited
	}
	normal := code == statusNoMessages || code == statusTimeout
	s.dmu.Lock()
	if i := s.pullIndex(m.Subject); i >= 0 {
		p := &s.pulls[i]
		if pending < 0 {
			p.left = 0
		} else {
			p.left = max(0, p.left-pending)
		}
		// What is still left was sent before the end: on its way.
		if p.left == 0 {
			s.pulls = append(s.pulls[:i], s.pulls[i+1:]...)
		}
	}
	if normal {
		s.pullOK = true
	} else {
		s.pullFailed = true
	}
	s.dmu.Unlock()
	s.signalRoom()
	if normal {
		return
	}
	lower := strings.ToLower(desc)
	switch {
	case code == statusConflict && (strings.Contains(lower, "shutdown") || strings.Contains(lower, "leadership")):
		// The server goes away or hands the consumer over: messages it
		// sent meanwhile are still received; pull asks again (after a
		// reconnect, at once).
		s.t.log.Debug("nats: pull request ended", "topic", s.topic, "group", s.group, "status", code, "description", desc)
	case code == statusConflict && strings.Contains(lower, "consumer deleted"):
		select {
		case s.lost <- struct{}{}:
		default:
		}
		s.t.log.Warn("nats: pull request ended: the consumer was deleted", "topic", s.topic, "group", s.group, "consumer", s.ss.durable)
	case code == statusNoResponder:
		// Nobody serves the consumer (gone, or its server is away):
		// progress's check finds out which and recreates a lost one.
		s.t.log.Warn("nats: pull request: no responders (consumer or its server unavailable)", "topic", s.topic, "group", s.group, "consumer", s.ss.durable)
	default:
		s.t.log.Warn("nats: pull request refused", "topic", s.topic, "group", s.group, "status", code, "description", desc)
	}
}

// pullReq is a pull request the subscription awaits messages of.
type pullReq struct {
	id   uint64    // its reply subject is inbox.prefix + id
	left int       // messages it may still bring
	seen time.Time // when it went out, or last brought a message or heartbeat
}

// pullIndex returns the index in pulls of the request whose reply
// subject is subj (that of a status message), or -1 (a request no longer
// awaited). Called with dmu.
func (s *subscription) pullIndex(subj string) int {
	if len(s.pulls) == 0 || !strings.HasPrefix(subj, s.inbox.prefix) {
		return -1
	}
	id, err := strconv.ParseUint(subj[len(s.inbox.prefix):], 10, 64)
	if err != nil {
		return -1
	}
	for i := range s.pulls {
		if s.pulls[i].id == id {
			return i
		}
	}
	return -1
}

// dropLostPulls forgets requests that brought neither messages nor
// heartbeats for pullLost: the server lost them (or the last messages of
// one that ended were lost with a connection). Called with dmu.
func (s *subscription) dropLostPulls(now time.Time) {
	kept := s.pulls[:0]
	for _, p := range s.pulls {
		if now.Sub(p.seen) < pullLost {
			kept = append(kept, p)
		}
	}
	clear(s.pulls[len(kept):])
	s.pulls = kept
}

// resetPulls forgets every pull request in flight, after a reconnect or a
// recreated consumer: the server no longer has them.
func (s *subscription) resetPulls() {
	s.dmu.Lock()
	s.pulls = s.pulls[:0]
	s.dmu.Unlock()
	select {
	case s.reset <- struct{}{}:
	default:
	}
}

func (s *subscription) signalRoom() {
	select {
	case s.room <- struct{}{}:
	default:
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

	ccMu     sync.Mutex
	cons     jetstream.Consumer // replaced when a lost consumer is recreated
	inbox    *pullInbox         // set before pull starts
	reqBuf   []byte             // pull's request, reused
	lost     chan struct{}
	ackFloor atomic.Uint64 // the consumer's ack floor (stream sequence), last seen

	// dmu guards the held messages and the workers' queues.
	dmu        sync.Mutex
	held       map[*held]struct{} // received and not finished, at most MaxHeld
	queues     [][]*held          // per worker: its messages not yet started, in stream order
	qclosed    bool               // no more messages are queued; workers exit when idle
	handback   []*natsgo.Msg      // received while closing; at most one pull batch
	pulls      []pullReq          // pull requests awaited: at most one open, and ended ones whose last messages are on their way
	pullSeq    uint64             // the last pull request's id
	pullOK     bool               // a pull request ended normally (408, 404)
	pullFailed bool               // a pull request failed: pull backs off
	wake       []chan struct{}    // per worker: its queue grew or closed
	room       chan struct{}      // a held message finished, or a pull request ended
	reset      chan struct{}      // the pull requests in flight are void (reconnect, recreated consumer)

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
	m     *natsgo.Msg
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
func (s *subscription) accept(m *natsgo.Msg) {
	now := time.Now()
	s.dmu.Lock()
	// A stream message arrives with its own subject, not the reply
	// subject of its request: it counts against the oldest request still
	// awaited (the server answers requests in order; one that ended sent
	// its last messages before the next request went out).
	if len(s.pulls) > 0 {
		if s.pulls[0].left--; s.pulls[0].left <= 0 {
			s.pulls = append(s.pulls[:0], s.pulls[1:]...)
		} else {
			s.pulls[0].seen = now
		}
	}
	if s.closing.Load() {
		// Received while Close began: Close hands it back (Nak) once the
		// inbox is drained, so that the server gives it to another member
		// (or the next subscription) at once. A Nak now could have it
		// redelivered to this subscription's open pull request, where it
		// would wait for AckWait.
		s.handback = append(s.handback, m)
		s.dmu.Unlock()
		return
	}
	h := &held{m: m, since: now}
	s.held[h] = struct{}{}
	w := 0
	if len(s.queues) > 1 {
		key := ""
		if hdr := m.Header; hdr != nil {
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
func (s *subscription) settle(jm *natsgo.Msg, attempt int, id string, err error) {
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

// nakDelay is the delay of the Nak after the attempt-th delivery failed:
// NakDelays by attempt, the last one repeated.
func (ss *subSettings) nakDelay(attempt int) time.Duration {
	return backoff.Policy{Delays: ss.nakDelays}.Delay(attempt)
}

func (s *subscription) nak(m *natsgo.Msg, d time.Duration) {
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
	var due []*natsgo.Msg
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
			if err := m.InProgress(); err != nil && !errors.Is(err, natsgo.ErrMsgAlreadyAckd) {
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

// pullRetry is the pause before asking again after a pull request was
// refused or lost; recreateRetry the pause between attempts to make a lost
// consumer again.
var (
	pullRetry     = backoff.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 2 * time.Second}
	recreateRetry = backoff.Policy{InitialInterval: 100 * time.Millisecond, MaxInterval: 5 * time.Second}
)

// recreate makes the consumer again, starting after the last ack floor
// seen, and has pull use it, retrying with backoff until it works or Close.
func (s *subscription) recreate() {
	for fails := 1; !s.closing.Load(); fails++ {
		start := s.ackFloor.Load() + 1
		ctx, cancel := context.WithTimeout(context.Background(), s.t.s.PublishTimeout)
		cons, err := s.t.ensureConsumer(ctx, s.topic, s.opts, s.ss, start)
		cancel()
		if err == nil {
			s.ccMu.Lock()
			s.cons = cons
			s.ccMu.Unlock()
			s.resetPulls() // the pull requests to the lost consumer are gone with it
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

// canonical maps the NATS binding's spelling of the CloudEvents attributes
// to the canonical one, so that the common ones cost no allocation.
var canonical = map[string]string{
	"ce-id": transport.HeaderID, "ce-source": transport.HeaderSource, "ce-specversion": transport.HeaderSpecVersion,
	"ce-type": transport.HeaderType, "ce-subject": transport.HeaderSubject, "ce-time": transport.HeaderTime,
	"ce-dataschema": transport.HeaderDataSchema, wireKeyHeader: transport.HeaderPartitionKey,
}

// fill makes the slot's Message the delivery of jm, mapping "ce-" headers
// back to the canonical "ce_" spelling.
func (sl *slot) fill(s *subscription, jm *natsgo.Msg) *transport.Message {
	if sl.hdr == nil {
		sl.hdr, sl.meta = make(map[string]string), make(map[string]string, 1)
	}
	clear(sl.hdr)
	clear(sl.meta)
	m := &sl.m
	*m = transport.Message{Topic: s.topic, Group: s.group, Body: jm.Data}
	for k, vs := range jm.Header {
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		if k == headerMsgID {
			m.ID = idOf(jm.Subject, v)
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
		var ctxErr error
		giveUp := func() {
			if ctxErr == nil {
				ctxErr = ctx.Err()
				s.cancel() // the handlers see their context end
			}
		}
		// Stop pull and progress only after the workers: progress keeps
		// the queued messages in progress while they wait.
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
		// Meanwhile stop the inbox, then hand back what arrived on it
		// since Close began.
		s.closeInbox(ctx)
		s.dmu.Lock()
		for _, m := range s.handback {
			s.nak(m, 0)
		}
		s.handback = nil
		s.dmu.Unlock()
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
