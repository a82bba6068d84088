package nats

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/busway/busway/transport/backoff"
)

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

// pullRetry is the pause before asking again after a pull request was
// refused or lost.
var pullRetry = backoff.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 2 * time.Second}

// puller is the subscription's side of the pull protocol: the requests it
// awaits messages of, the inbox they come to, and the signals that have
// run ask again.
type puller struct {
	s      *subscription
	inbox  *pullInbox // set before run starts
	refill int        // the least room worth a request (but for an empty subscription)
	next   string     // the consumer's "next" subject, the requests' subject

	// mu guards the requests awaited and how the last ones ended. It is
	// the held set's lock (heldSet.mu): accept changes both for every
	// message, under one lock. Nothing is called with it that takes it.
	mu      *sync.Mutex
	pulls   []pullReq    // pull requests awaited, oldest first: open ones, and ended ones whose last messages are on their way
	asked   atomic.Int32 // the sum of pulls' left: messages asked for and not yet received; changed under mu
	seq     uint64       // the last pull request's id
	ok      bool         // a pull request ended normally (408, 404)
	failed  bool         // a pull request failed: run backs off
	backoff bool         // run waits before asking again: only run asks

	room  chan struct{} // a request went out or ended, or room came that only run can ask for
	reset chan struct{} // the pull requests in flight are void (reconnect, recreated consumer)
}

// pullReq is a pull request the subscription awaits messages of.
type pullReq struct {
	id   uint64        // its reply subject is inbox.prefix + id
	left int           // messages it may still bring (as counted: see received)
	seen time.Duration // when it went out, or last brought a heartbeat, or any request a message (see subscription.clock)
}

// want returns how many messages to ask for now: the room that the held
// set and the messages asked for and not yet received leave, when it is
// at least refill; 0 while a request failed or run backs off. Requests
// need not wait for the last one to be answered: while one is answered
// the next is on its way, so that the server never waits for it while
// there is room. Called with mu.
func (p *puller) want() int {
	if p.failed || p.backoff {
		return 0
	}
	return p.roomFor(p.s.held.len(), int(p.asked.Load()))
}

// roomFor returns how many messages to ask for while the held set holds
// h and a are asked for and not yet received: the room they leave, when
// that is at least refill, else 0.
func (p *puller) roomFor(h, a int) int {
	if room := p.s.ss.maxHeld - h - a; room >= p.refill {
		return room
	}
	return 0
}

// open registers a request for n messages, sent at now, and returns its
// reply subject and body. Called with mu; the caller sends it with send
// once it released mu (the request is awaited from now on, so no other
// goroutine asks meanwhile).
func (p *puller) open(n int, now time.Duration) (reply string, req []byte) {
	p.seq++
	p.pulls = append(p.pulls, pullReq{id: p.seq, left: n, seen: now})
	p.asked.Add(int32(n))
	req = make([]byte, 0, 80)
	req = append(req, `{"batch":`...)
	req = strconv.AppendInt(req, int64(n), 10)
	req = append(req, `,"expires":`...)
	req = strconv.AppendInt(req, pullExpires.Nanoseconds(), 10)
	req = append(req, `,"idle_heartbeat":`...)
	req = strconv.AppendInt(req, pullHeartbeat.Nanoseconds(), 10)
	req = append(req, '}')
	return p.inbox.prefix + strconv.FormatUint(p.seq, 10), req
}

// send publishes a request open made. One that could not be sent is no
// longer awaited (those sent before it still are) and has run back off.
func (p *puller) send(reply string, req []byte) {
	s := p.s
	if err := s.t.nc.PublishRequest(p.next, reply, req); err != nil {
		p.mu.Lock()
		if i := p.index(reply); i >= 0 {
			p.setLeft(i, 0)
		}
		p.failed = true
		p.mu.Unlock()
		s.t.log.Warn("nats: pull request", "topic", s.topic, "group", s.group, "error", err)
	}
}

// kick asks for messages from the calling goroutine, the one that made
// room (a worker that finished a message, the inbox that saw a request
// end): waking run to ask would wait until the scheduler runs it, which
// on a busy machine is when the workers have run out of messages. What
// kick does not do (look after a request in flight, back off, wait for a
// reconnect) it leaves to run, which it tells when it sent a request or
// cannot send one.
func (p *puller) kick() {
	s := p.s
	if p.roomFor(s.held.len(), int(p.asked.Load())) == 0 {
		return // no room worth a request (want says so too, with mu)
	}
	p.mu.Lock()
	n := p.want()
	if n == 0 || s.closing.Load() {
		p.mu.Unlock()
		return
	}
	if !s.t.nc.IsConnected() {
		p.mu.Unlock()
		p.signalRoom() // run waits for the reconnect
		return
	}
	reply, req := p.open(n, s.clock())
	p.mu.Unlock()
	p.send(reply, req)
	p.signalRoom() // run watches the request (or backs off)
}

// run asks the server for messages while the subscription runs, never for
// more than there is room for: what a subscription holds plus what it has
// asked for and not yet received stays within MaxHeld, and every message
// it holds is in the held set, which progress keeps in progress on the
// server. Nothing waits unseen in a client buffer.
//
// A request goes out whenever the room left by what is held and what is
// asked for is worth one, also while earlier ones are still answered, all
// answered on one inbox subscription that lives as long as the
// subscription: a message the server sends after it ended the request (it
// announces a shutdown before it stops sending) is still received and
// handled, not left to come back after AckWait. Most requests go out from
// kick, at once where room came; run sends the first, those after a
// failure or a reconnect, and notices lost ones.
func (p *puller) run() {
	s := p.s
	defer s.wg.Done()
	fails := 0 // pull requests refused or lost in a row
	for {
		var wait <-chan time.Time
		var tm *time.Timer
		p.mu.Lock()
		if p.ok {
			fails = 0
		}
		failed := p.failed
		p.ok, p.failed, p.backoff = false, false, failed
		now := s.clock()
		p.dropLost(now)
		n := p.want()
		if len(p.pulls) > 0 {
			// A request is open, or messages it sent are on their way:
			// wait for them, or for an end to be overdue.
			seen := p.pulls[0].seen
			for _, r := range p.pulls[1:] {
				seen = min(seen, r.seen)
			}
			tm = time.NewTimer(seen + pullLost - now)
			wait = tm.C
		}
		if n > 0 && !s.t.nc.IsConnected() {
			// A request sent now would wait in nats.go's reconnect buffer
			// and reach the server alongside the one sent after the
			// reconnect: wait for the reconnect (resetPulls) instead.
			n = 0
			tm = time.NewTimer(time.Second)
			wait = tm.C
		}
		if n > 0 {
			if s.closing.Load() {
				p.mu.Unlock()
				return
			}
			reply, req := p.open(n, now)
			p.mu.Unlock()
			p.send(reply, req)
			continue
		}
		p.mu.Unlock()
		if failed {
			// The server refused or lost the request: wait a little before
			// asking again (a reconnect or a recreated consumer ends the
			// wait), not at every finished message.
			fails++
			tm = time.NewTimer(pullRetry.Delay(fails))
			select {
			case <-tm.C:
			case <-p.reset:
				fails = 0
			case <-s.stop:
				tm.Stop()
				return
			}
			tm.Stop()
			p.mu.Lock()
			p.backoff = false
			p.mu.Unlock()
			continue
		}
		select {
		case <-p.room:
		case <-p.reset:
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
func (p *puller) newInbox() (*pullInbox, error) {
	s := p.s
	in := &pullInbox{prefix: s.t.nc.NewInbox() + ".", end: make(chan struct{})}
	sub, err := s.t.nc.Subscribe(in.prefix+"*", p.receive)
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
func (p *puller) closeInbox(ctx context.Context) {
	s, in := p.s, p.inbox
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
func (p *puller) receive(m *natsgo.Msg) {
	s := p.s
	if m.Reply == "" && len(m.Data) == 0 {
		// A stream message always has an ack subject as its reply; a
		// status never does.
		if code := m.Header.Get(hdrStatus); code != "" {
			p.status(code, m)
			return
		}
	}
	if m.Reply == "" {
		s.t.log.Warn("nats: unexpected message on the pull inbox", "topic", s.topic, "group", s.group, "subject", m.Subject)
		return
	}
	s.accept(m)
}

// received counts a stream message that arrived at now. It comes with its
// own subject, not the reply subject of its request, and the server
// answers the requests it waits on in turns, a message to each: it counts
// against the oldest request still awaited, which keeps asked exact (one
// message fewer on the way) while a request's own count may be off its
// true one (below for the oldest, above for later ones). That errs on the
// safe side only: a request's end (see status) takes off at most what the
// server says it did not send, so asked is never below what is truly on
// its way. Every request awaited counts as seen: the server is answering.
//
// Room does not grow here (held grew by what asked lost): nothing to ask.
// Called with mu.
func (p *puller) received(now time.Duration) {
	if len(p.pulls) > 0 {
		p.setLeft(0, p.pulls[0].left-1)
		for i := range p.pulls {
			p.pulls[i].seen = now
		}
	}
}

// status takes in a status message: every one but a heartbeat ends the
// pull request; the messages it did not send (Nats-Pending-Messages) are
// no longer awaited.
func (p *puller) status(code string, m *natsgo.Msg) {
	s := p.s
	if code == statusHeartbeat {
		p.mu.Lock()
		if i := p.index(m.Subject); i >= 0 {
			p.pulls[i].seen = s.clock()
		}
		p.mu.Unlock()
		return
	}
	desc := m.Header.Get(hdrDescription)
	pending, err := strconv.Atoi(m.Header.Get(hdrPendingMsgs))
	if err != nil || pending < 0 {
		pending = -1 // unknown: nothing more is awaited
	}
	normal := code == statusNoMessages || code == statusTimeout
	p.mu.Lock()
	if i := p.index(m.Subject); i >= 0 {
		// What is still left was sent before the end: on its way.
		left := 0
		if pending >= 0 {
			left = p.pulls[i].left - pending
		}
		p.setLeft(i, left)
	}
	if normal {
		p.ok = true
	} else {
		p.failed = true
	}
	p.mu.Unlock()
	if normal {
		p.kick()
		return
	}
	p.signalRoom()
	lower := strings.ToLower(desc)
	switch {
	case code == statusConflict && (strings.Contains(lower, "shutdown") || strings.Contains(lower, "leadership")):
		// The server goes away or hands the consumer over: messages it
		// sent meanwhile are still received; pull asks again (after a
		// reconnect, at once).
		s.t.log.Debug("nats: pull request ended", "topic", s.topic, "group", s.group, "status", code, "description", desc)
	case code == statusConflict && strings.Contains(lower, "consumer deleted"):
		s.cons.signalLost()
		s.t.log.Warn("nats: pull request ended: the consumer was deleted", "topic", s.topic, "group", s.group, "consumer", s.ss.durable)
	case code == statusNoResponder:
		// Nobody serves the consumer (gone, or its server is away):
		// progress's check finds out which and recreates a lost one.
		s.t.log.Warn("nats: pull request: no responders (consumer or its server unavailable)", "topic", s.topic, "group", s.group, "consumer", s.ss.durable)
	default:
		s.t.log.Warn("nats: pull request refused", "topic", s.topic, "group", s.group, "status", code, "description", desc)
	}
}

// index returns the index in pulls of the request whose reply subject is
// subj (that of a status message), or -1 (a request no longer awaited).
// Called with mu.
func (p *puller) index(subj string) int {
	if len(p.pulls) == 0 || !strings.HasPrefix(subj, p.inbox.prefix) {
		return -1
	}
	id, err := strconv.ParseUint(subj[len(p.inbox.prefix):], 10, 64)
	if err != nil {
		return -1
	}
	for i := range p.pulls {
		if p.pulls[i].id == id {
			return i
		}
	}
	return -1
}

// dropLost forgets requests that brought neither messages nor heartbeats
// for pullLost: the server lost them (or the last messages of one that
// ended were lost with a connection). Called with mu.
func (p *puller) dropLost(now time.Duration) {
	kept := p.pulls[:0]
	for _, r := range p.pulls {
		if now-r.seen < pullLost {
			kept = append(kept, r)
		} else {
			p.asked.Add(int32(-r.left))
		}
	}
	clear(p.pulls[len(kept):])
	p.pulls = kept
}

// setLeft sets how many messages request i may still bring (at least 0),
// keeping asked their sum, and forgets the request once it may bring none.
// Called with mu.
func (p *puller) setLeft(i, left int) {
	left = max(left, 0)
	p.asked.Add(int32(left - p.pulls[i].left))
	p.pulls[i].left = left
	if left == 0 {
		p.pulls = slices.Delete(p.pulls, i, i+1)
	}
}

// clearPulls forgets every request awaited. Called with mu.
func (p *puller) clearPulls() {
	p.pulls = p.pulls[:0]
	p.asked.Store(0)
}

// resetPulls forgets every pull request in flight, after a reconnect or a
// recreated consumer: the server no longer has them.
func (p *puller) resetPulls() {
	p.mu.Lock()
	p.clearPulls()
	p.mu.Unlock()
	select {
	case p.reset <- struct{}{}:
	default:
	}
}

// signalRoom tells run that room may have come: a held message finished
// or a request ended.
func (p *puller) signalRoom() {
	select {
	case p.room <- struct{}{}:
	default:
	}
}
