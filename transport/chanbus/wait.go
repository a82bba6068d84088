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
// WaitSettled). Publishers and workers change them on every message, so
// each is an atomic counter; only its waiters take a lock.
type pending struct {
	idle, unacked counter
}

type counter struct {
	n       atomic.Int64
	waiting atomic.Bool // a waiter registered: the add that reaches 0 wakes it
	mu      sync.Mutex
	waiters chan struct{} // closed when n reaches 0; nil while nobody waits
}

func (p *pending) add(idle, unacked int) {
	if idle != 0 {
		p.idle.add(int64(idle))
	}
	if unacked != 0 {
		p.unacked.add(int64(unacked))
	}
}

func (c *counter) add(k int64) {
	// Add then look for a waiter, as wait registers then looks at n: one
	// of the two sees the other (sequentially consistent atomics).
	if c.n.Add(k) == 0 && c.waiting.Load() {
		c.wake()
	}
}

// wake releases the waiters: n reached 0 since they registered.
func (c *counter) wake() {
	c.mu.Lock()
	if c.waiters != nil {
		close(c.waiters)
		c.waiters = nil
		c.waiting.Store(false)
	}
	c.mu.Unlock()
}

// wait waits until c, one of p's counters, is 0.
func (p *pending) wait(ctx context.Context, c *counter) error {
	if c.n.Load() == 0 {
		return nil
	}
	c.mu.Lock()
	if c.waiters == nil {
		c.waiters = make(chan struct{})
	}
	ch := c.waiters
	c.waiting.Store(true)
	c.mu.Unlock()
	if c.n.Load() == 0 {
		c.wake() // it reached 0 before the add could see this waiter
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
