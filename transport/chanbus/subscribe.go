package chanbus

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

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
	groups := t.groups(topic)
	for _, x := range groups {
		if x.name == opts.Group {
			g = x
			break
		}
	}
	if g == nil {
		g = t.newGroup(topic, opts.Group)
		t.setGroups(topic, append(slices.Clip(groups), g))
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
		w.ctx = context.WithValue(hctx, transport.BlockerKey{}, w)
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
		groups := t.groups(g.topic)
		rest := make([]*group, 0, len(groups))
		for _, x := range groups {
			if x != g {
				rest = append(rest, x)
			}
		}
		t.setGroups(g.topic, rest)
	}
	t.mu.Unlock()
	if last {
		g.teardown()
	}
}

// worker is one worker goroutine of a subscription (or the goroutine that
// took its place after a handler's runtime.Goexit).
type worker struct {
	s   *subscription
	ctx context.Context // the handlers' context, carrying the worker
	// cur and lane are the delivery whose handler runs, and its lane: set
	// while the handler runs, so that the goroutine's deferred call sees a
	// handler that ended it with runtime.Goexit.
	cur  *delivery
	lane *lane
	// waiting counts this worker's handler's publishes waiting for room;
	// guarded by t.waits.mu.
	waiting int
	free    *freeList // deliveries done with, for Publish to reuse (see recycle)
}

// Block counts w as waiting, as a publish waiting for room counts, until
// the returned func is called (transport.Blocker): its handler waits for
// something other than chanbus (a semaphore), so no publisher may count on
// it to make room.
func (w *worker) Block() (unblock func()) {
	ws := &w.s.t.waits
	ws.hold(w)
	return func() { ws.resume(w) }
}

// publisher returns the worker whose handler called Publish with ctx, or
// nil when ctx is not a handler's context of t. A handler's context
// carries its worker as its transport.Blocker, under the one key.
func (t *Transport) publisher(ctx context.Context) *worker {
	if w, ok := ctx.Value(transport.BlockerKey{}).(*worker); ok && w.s.t == t {
		return w
	}
	return nil
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
			l := w.lane
			w.cur, w.lane = nil, nil
			s.failed(w.ctx, l, d, transport.ErrHandlerGoexit)
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
	for {
		l := s.g.d.Next(s.stop, w)
		if l == nil {
			return // stopped
		}
		s.run(w, l)
		if w.free != nil && s.g.d.ReadyLanes() == 0 {
			// Likely to wait for work: pass the deliveries on now, so
			// that the pool has them and the GC may drop them.
			w.passFree()
		}
	}
}

// run handles the messages of the lane l, which w took from the group's
// dispatcher, until the dispatcher takes it back (empty, or another lane's
// turn), a handler fails or the subscription stops.
//
// Its acknowledged messages leave the pending counts in batches (at most
// ackBatch at a time, and all before run returns): the count is a word
// that every publish writes too, and each add from here moved its cache
// line to this worker's core. A count that lags stays above zero only
// while this worker is still running the lane's messages, whose WaitIdle
// waits anyway.
func (s *subscription) run(w *worker, l *lane) {
	ctx := w.ctx
	acked := 0
	defer func() {
		if acked > 0 {
			s.t.pend.add(-acked, -acked)
		}
	}()
	for {
		if s.stopping() {
			s.g.d.Release(l) // for another member's worker, or teardown
			return
		}
		d := l.Head()
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
		w.cur, w.lane = d, l
		err := transport.CallHandler(ctx, s.t.log, s.h, &d.msg)
		w.cur, w.lane = nil, nil
		if err != nil {
			s.failed(ctx, l, d, err)
			return
		}
		if acked++; acked == ackBatch {
			s.t.pend.add(-acked, -acked)
			acked = 0
		}
		keep := s.g.d.Done(l)
		w.recycle(d)
		if !keep {
			return
		}
	}
}

// ackBatch is how many acknowledged messages a worker counts before it
// takes them off the pending counts (see run).
const ackBatch = 32

// failed keeps d at the head of its lane l, which w held, to be delivered
// again after its backoff.
func (s *subscription) failed(ctx context.Context, l *lane, d *delivery, err error) {
	delay := s.t.backoffDelay(d.attempt)
	s.t.log.LogAttrs(ctx, slog.LevelDebug, "chanbus: handler failed; will redeliver",
		slog.String("topic", s.g.topic), slog.String("group", s.g.name), slog.String("id", d.msg.ID),
		slog.Int("attempt", d.attempt), slog.Duration("backoff", delay), slog.Any("error", err))
	s.g.backoff(l, delay)
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
