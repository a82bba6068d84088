package chanbus

import (
	"context"
	"sync"
	"sync/atomic"
)

// waits tracks which workers wait inside a handler's Publish (or, before a
// handler, for a message's gate, which its publisher opens once it queued
// the message for every group), so that a publish from a handler never
// waits for room that only waiting workers could make.
//
// A publish from inside a handler may wait for room in a full key only
// while the worker holding the key's lane (the dispatcher's owner) is not
// waiting to publish (it will take the key's next message), or, when no
// worker holds it (it is ready, or in retry backoff), while its group has
// a worker that is not waiting (it will come to the lane). It may wait for
// room in a full group only while a worker that is not waiting will take a
// message: the holder of the key's lane, when the key has messages
// waiting, or any of the group's running workers while a lane is ready or
// in backoff. (A full group whose waiting messages all sit behind lanes
// that waiting workers hold has no such worker.) Whenever a worker starts
// waiting, every waiting publish looks again (changed), and a message
// taken makes room (the dispatcher's room channel). A chain of waits
// therefore always ends at a worker that runs, and no cycle of waits can
// form: no deadlock.
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

// mayWait reports whether w's handler may wait for room for a message of
// key in g, whose dispatcher refused it (TryAdd) while owner held the
// key's lane (nil: no worker did), and returns the channel closed when
// that should be looked at again. With mark it first counts w as waiting
// (resume undoes it).
func (ws *waits) mayWait(w *worker, g *group, key string, owner any, mark bool) (bool, <-chan struct{}) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if mark {
		ws.holdLocked(w)
	}
	o, _ := owner.(*worker)
	ownerRuns := o != nil && o.waiting == 0
	all, ofKey := g.d.Waiting(key)
	var ok bool
	switch {
	case key != "" && ofKey >= g.t.cfg.keyLimit():
		if o != nil {
			ok = ownerRuns
		} else {
			ok = g.running > 0
		}
	case all >= g.t.cfg.groupLimit():
		ok = ownerRuns && ofKey > 0 ||
			g.running > 0 && (g.d.ReadyLanes() > 0 || g.inBackoff())
	default:
		ok = true // a worker took a message meanwhile: room is signalled
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

// pending counts the messages queued or being handled (idle: WaitIdle)
// and those not yet acknowledged or dropped, backoff included (unacked:
// WaitSettled). Publishers and workers change both on every message, so
// they share one atomic word (idle in its low 32 bits, unacked in its high
// 32), which each changes with one atomic add, on a cache line of its own:
// the fields Publish reads stay off the line that every worker writes.
// Only waiters take the lock.
//
// Neither count goes below zero, not even for a moment: a message is
// counted before it is queued and uncounted after, so an add never borrows
// from the other half.
type pending struct {
	_       [64]byte
	n       atomic.Uint64
	waiting atomic.Bool // a waiter registered: the add that reaches 0 wakes it
	_       [64]byte
	mu      sync.Mutex
	idle    chan struct{} // closed when idle reaches 0; nil while nobody waits
	unacked chan struct{} // the same for unacked
}

// Which of pending's counts a waiter waits for.
const (
	idleCount    = 1
	unackedCount = 2
)

func (p *pending) add(idle, unacked int) {
	v := p.n.Add(uint64(int64(idle)) + uint64(int64(unacked))<<32)
	// Add then look for a waiter, as wait registers then looks at n: one
	// of the two sees the other (sequentially consistent atomics).
	var zero int
	if idle != 0 && uint32(v) == 0 {
		zero |= idleCount
	}
	if unacked != 0 && v>>32 == 0 {
		zero |= unackedCount
	}
	if zero != 0 && p.waiting.Load() {
		p.wake(zero)
	}
}

// count returns one of the counts.
func (p *pending) count(which int) uint64 {
	v := p.n.Load()
	if which == idleCount {
		return uint64(uint32(v))
	}
	return v >> 32
}

// wake releases the waiters of the counts in zero: they reached 0 since
// the waiters registered.
func (p *pending) wake(zero int) {
	p.mu.Lock()
	if zero&idleCount != 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
	if zero&unackedCount != 0 && p.unacked != nil {
		close(p.unacked)
		p.unacked = nil
	}
	p.waiting.Store(p.idle != nil || p.unacked != nil)
	p.mu.Unlock()
}

// wait waits until one of the counts (idleCount, unackedCount) is 0.
func (p *pending) wait(ctx context.Context, which int) error {
	if p.count(which) == 0 {
		return nil
	}
	p.mu.Lock()
	ch := &p.idle
	if which == unackedCount {
		ch = &p.unacked
	}
	if *ch == nil {
		*ch = make(chan struct{})
	}
	w := *ch
	p.waiting.Store(true)
	p.mu.Unlock()
	if p.count(which) == 0 {
		p.wake(which) // it reached 0 before the add could see this waiter
	}
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
