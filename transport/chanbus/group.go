package chanbus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/internal/dispatch"
)

// lane is a key's lane of a group's dispatcher: its unfinished deliveries.
type lane = dispatch.Lane[*delivery]

// group is the state of one (topic, group), shared by its members: a
// dispatcher whose lanes (one per key with messages, one per keyless
// message) its members' workers take.
type group struct {
	t           *Transport
	topic, name string
	d           *dispatch.Dispatcher[*delivery]
	// gone is closed by teardown: it unblocks waiting publishers. No
	// message is queued after teardown drained the dispatcher: from then
	// on the dispatcher refuses every one (see enqueue).
	gone    chan struct{}
	members int // guarded by t.mu
	running int // workers of its members not waiting to publish; guarded by t.waits.mu

	// backoffs holds the lanes whose head waits in retry backoff (Hold),
	// with the timer that makes them ready again; teardown empties it.
	bmu      sync.Mutex
	backoffs map[*lane]*time.Timer
	timers   sync.WaitGroup // retry timers that may still fire
}

func (t *Transport) newGroup(topic, name string) *group {
	return &group{
		t: t, topic: topic, name: name,
		d: dispatch.New[*delivery](dispatch.Config{
			KeyLimit: t.cfg.keyLimit(),
			Limit:    t.cfg.groupLimit(),
			Turn:     batchPerTurn,
		}),
		gone:     make(chan struct{}),
		backoffs: make(map[*lane]*time.Timer),
	}
}

// enqueue queues d, blocking while its key or the group is full until ctx
// ends. w is the worker whose handler publishes, or nil: such a publish
// waits only while waits.mayWait says room is sure to come, else it queues
// d beyond the limits. A removed group drops d.
//
// d is counted as pending before it is queued; teardown's Drain counts off
// the messages it drops, and a refusal after it (the group is removed)
// counts d off here, so every message is counted off once.
func (g *group) enqueue(ctx context.Context, d *delivery, w *worker) error {
	g.t.pend.add(1, 1)
	ok, room, owner := g.d.TryAdd(d.msg.Key, d)
	switch {
	case ok:
		return nil
	case room == nil:
		return g.dropped()
	}
	return g.waitRoom(ctx, d, w, room, owner)
}

// dropped is what a publish to g returns once g was removed (its last
// member left, or the transport closed): d was not queued, and is counted
// off.
func (g *group) dropped() error {
	g.t.pend.add(-1, -1)
	if g.t.closer.Closed() {
		return fmt.Errorf("chanbus: publish to %q: %w", g.topic, transport.ErrClosed)
	}
	return nil // the group's last member left: dropped, as documented
}

// waitRoom queues d once the dispatcher has room (see enqueue); room and
// owner are what its TryAdd refusal returned.
func (g *group) waitRoom(ctx context.Context, d *delivery, w *worker, room <-chan struct{}, owner any) error {
	key := d.msg.Key
	marked := false // w counted as waiting
	defer func() {
		if marked {
			g.t.waits.resume(w)
		}
	}()
	for {
		var changed <-chan struct{}
		if w != nil {
			var may bool
			may, changed = g.t.waits.mayWait(w, g, key, owner, !marked)
			marked = true
			if !may {
				// Queued beyond the limits: waiting could deadlock.
				if !g.d.Add(key, d) {
					return g.dropped()
				}
				return nil
			}
		}
		select {
		case <-room:
		case <-changed: // a worker started waiting: look again
		case <-ctx.Done():
			g.t.pend.add(-1, -1)
			return ctx.Err()
		case <-g.gone:
			return g.dropped()
		}
		if g.t.closer.Closed() {
			// The transport is closing: the group drops what it holds
			// (teardown), so a publisher that waited for room gets
			// ErrClosed, not a nil for a message about to be dropped.
			return g.dropped()
		}
		var ok bool
		if ok, room, owner = g.d.TryAdd(key, d); ok {
			return nil
		}
		if room == nil {
			return g.dropped()
		}
	}
}

// backoff keeps the head of l, which its worker held, for a retry: l's key
// waits and its lane is ready again after delay. Waiting in backoff counts
// as idle for WaitIdle.
func (g *group) backoff(l *lane, delay time.Duration) {
	g.d.Hold(l)
	g.bmu.Lock()
	g.timers.Add(1)
	g.backoffs[l] = time.AfterFunc(delay, func() { g.wake(l) })
	g.bmu.Unlock()
	g.t.pend.add(-1, 0)
}

// wake ends l's backoff, unless teardown ended it first.
func (g *group) wake(l *lane) {
	defer g.timers.Done()
	g.bmu.Lock()
	defer g.bmu.Unlock()
	if _, ok := g.backoffs[l]; !ok {
		return
	}
	g.t.pend.add(1, 0)
	g.d.Ready(l)
	delete(g.backoffs, l)
}

// inBackoff reports whether a lane of g waits in retry backoff.
func (g *group) inBackoff() bool {
	g.bmu.Lock()
	defer g.bmu.Unlock()
	return len(g.backoffs) > 0
}

// teardown drops what is still queued for a group with no members. Every
// worker of the group has stopped.
func (g *group) teardown() {
	close(g.gone)
	dropped := 0
	g.bmu.Lock()
	for l, timer := range g.backoffs {
		if timer.Stop() {
			g.timers.Done()
		}
		dropped++ // in backoff: not counted as pending (its timer's wake sees it gone)
		delete(g.backoffs, l)
	}
	g.bmu.Unlock()
	g.timers.Wait()
	// Every other message waits in the dispatcher, counted as pending; the
	// heads held in backoff stay with their (stopped) timers.
	counted := g.d.Drain(func(*delivery) {})
	dropped += counted
	if dropped > 0 {
		g.t.pend.add(-counted, -dropped) // each was unacknowledged
		g.t.log.LogAttrs(context.Background(), slog.LevelDebug, "chanbus: group removed; dropped its queued messages",
			slog.String("topic", g.topic), slog.String("group", g.name), slog.Int("dropped", dropped))
	}
}
