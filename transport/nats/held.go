package nats

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// heldSet is what a subscription holds: the messages received from the
// server and not yet finished (waiting in the dispatcher or being handled),
// at most MaxHeld, which progress keeps in progress on the server; and,
// once Close began, the messages that arrived since, to hand back.
type heldSet struct {
	s *subscription

	// mu guards the set, and pull's requests (it is puller.mu).
	mu       sync.Mutex
	list     held          // sentinel of the messages received and not finished, oldest first: at most MaxHeld
	free     *held         // finished ones to reuse, linked by next
	nfree    int           // the length of free, at most MaxHeld
	handback []*natsgo.Msg // received while closing; at most one pull batch
	n        atomic.Int32  // how many list holds, changed under mu
	// emptied, while wait waits, is closed once list is empty: every
	// message it held was acked or naked.
	emptied chan struct{}
}

// held is a message the subscription holds: queued or being handled. Once
// released it is reused for a later message: the worker that ran it
// releases it last.
type held struct {
	m          *natsgo.Msg
	since      time.Duration // when received or last reported in progress (see subscription.clock)
	prev, next *held         // in the held set's list
}

// add takes m, received at now, into the set and queues it on dl, under
// the set's lock (the caller holds it): Close marks the subscription
// closing under the same lock before it closes the dispatcher, so every
// message queued is counted and run before the workers end. Once Close
// began, m is kept to be handed back instead (see handBack).
func (hs *heldSet) add(m *natsgo.Msg, now time.Duration, dl *delivery) {
	if hs.s.closing.Load() {
		// Received while Close began: Close hands it back (Nak) once the
		// inbox is drained, so that the server gives it to another member
		// (or the next subscription) at once. A Nak now could have it
		// redelivered to this subscription's open pull request, where it
		// would wait for AckWait.
		hs.handback = append(hs.handback, m)
		return
	}
	h := hs.free
	if h != nil {
		hs.free, h.next = h.next, nil
		hs.nfree--
	} else {
		h = new(held)
	}
	h.m, h.since = m, now
	if hs.list.next == nil {
		hs.list.next, hs.list.prev = &hs.list, &hs.list
	}
	h.prev, h.next = hs.list.prev, &hs.list
	h.prev.next, hs.list.prev = h, h
	hs.n.Add(1)
	dl.queue(h)
}

// release drops finished messages from the set: there is room for as
// many others.
func (hs *heldSet) release(done []*held) {
	if len(done) == 0 {
		return
	}
	hs.mu.Lock()
	for _, h := range done {
		h.prev.next, h.next.prev = h.next, h.prev
		*h = held{}
		if hs.nfree < hs.s.ss.maxHeld {
			h.next, hs.free = hs.free, h
			hs.nfree++
		}
	}
	var emptied chan struct{}
	if hs.n.Add(-int32(len(done))) == 0 {
		emptied, hs.emptied = hs.emptied, nil
	}
	hs.mu.Unlock()
	clear(done)
	hs.s.pull.kick()
	if emptied != nil {
		close(emptied)
	}
}

// len returns how many messages the set holds.
func (hs *heldSet) len() int { return int(hs.n.Load()) }

// startClosing marks the subscription closing: add takes no more messages
// in but keeps them for handBack.
func (hs *heldSet) startClosing() {
	hs.mu.Lock()
	hs.s.closing.Store(true)
	hs.mu.Unlock()
}

// handBack naks the messages that arrived since Close began.
func (hs *heldSet) handBack() {
	hs.mu.Lock()
	for _, m := range hs.handback {
		hs.s.nak(m, 0)
	}
	hs.handback = nil
	hs.mu.Unlock()
}

// wait waits until every message the set took in is finished.
// Called once, after startClosing: the set takes no more in.
func (hs *heldSet) wait() {
	hs.mu.Lock()
	if hs.n.Load() == 0 {
		hs.mu.Unlock()
		return
	}
	hs.emptied = make(chan struct{})
	emptied := hs.emptied
	hs.mu.Unlock()
	<-emptied
}

// due appends to due the messages held for every since they were received
// or last reported, and marks them reported at now.
func (hs *heldSet) due(due []*natsgo.Msg, now, every time.Duration) []*natsgo.Msg {
	hs.mu.Lock()
	for h := hs.list.next; h != nil && h != &hs.list; h = h.next {
		if now-h.since >= every {
			h.since = now
			due = append(due, h.m)
		}
	}
	hs.mu.Unlock()
	return due
}

// progress runs while the subscription does: every message it holds,
// waiting in the dispatcher or being handled, is reported in progress to
// the server once it was held for a quarter of AckWait, so that nothing
// the subscription holds is redelivered meanwhile; and it watches the
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
		case <-s.cons.lost:
			s.cons.recreate()
			continue
		case <-tick.C:
		}
		due = s.held.due(due[:0], s.clock(), every)
		for _, m := range due {
			if err := m.InProgress(); err != nil && !errors.Is(err, natsgo.ErrMsgAlreadyAckd) {
				s.t.log.Warn("nats: in-progress", "topic", s.topic, "group", s.group, "error", err)
			}
		}
		clear(due)
		s.cons.check(every)
	}
}
