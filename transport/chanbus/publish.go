package chanbus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/busway/busway/internal/clock"
	"github.com/busway/busway/transport"
)

// Publish queues a copy of each message for every group subscribed to
// topic, blocking while a group's key or the group is full until ctx ends (but see the
// package documentation for a Publish from inside a handler: it never waits
// for room that only a waiting worker could make). Messages for a topic
// without groups are dropped. It returns ErrClosed after Close.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	groups := t.groups(topic)
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
	now := clock.Now()
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
	var gate chan struct{}
	if len(groups) > 1 {
		gate = make(chan struct{})
		defer close(gate)
	}
	for _, g := range groups {
		d := newDelivery(m, topic, g.name, now)
		d.gate = gate
		if err := g.enqueue(ctx, d, w); err != nil {
			return err
		}
	}
	return nil
}

// delivery is one group's copy of a message.
type delivery struct {
	msg     transport.Message
	attempt int
	gate    <-chan struct{} // nil, or closed once the message is queued for every group
	// hkeys are the names msg.Header was last filled with (see
	// copyHeader), so that the next copy looks them up in the new
	// message's Header instead of ranging over it.
	hkeys []string
}

// Deliveries are recycled with their Header maps and Body buffers: the
// transport contract lets a transport reuse a Message once its handler
// returned, and the copy per group is most of Publish's cost. A worker
// collects the deliveries it is done with in a batch of its own and passes
// them on a full batch at a time; Publish takes one from a full batch,
// which it puts back while it has more (in partial, on its P's private
// slot, so the next Publish there finds it at once). The deliveries
// then change cores a batch at a time: with one pool of deliveries, every
// Publish stole the one its worker had just put on the other core's share
// of the pool, and both wrote that share's word on every message.
//
// The batches a worker passes on go first to a short stack (fresh), and the
// next Publish that needs a batch takes the one passed on last: the
// deliveries reused are the ones used last, whose buffers are still in
// the caches. Through the pool alone (a Publish takes another core's
// batches from the far end of its share, the oldest) every delivery ever
// made took its turn: after a burst of Publishes before the worker ran
// (512 at the default limits, 2 MB at 4 KiB a body) each copy wrote a
// Body buffer that had left the core's caches. The stack keeps freshMax
// batches; a batch passed on while it is full pushes its oldest to the
// pool, where the GC may drop it.
var (
	partial, full, empty sync.Pool // of *freeList: a Publish's batch in use, with deliveries, emptied
	fresh                freshStack
)

// freshStack is the last batches passed on, the newest on top.
type freshStack struct {
	mu sync.Mutex
	n  int
	fl [freshMax]*freeList
}

// freshMax is how many batches fresh keeps (64 deliveries).
const freshMax = 2

// push puts f on top, and the oldest batch in the pool when full.
func (s *freshStack) push(f *freeList) {
	s.mu.Lock()
	var old *freeList
	if s.n == freshMax {
		old = s.fl[0]
		copy(s.fl[:], s.fl[1:])
		s.n--
	}
	s.fl[s.n] = f
	s.n++
	s.mu.Unlock()
	if old != nil {
		full.Put(old)
	}
}

// pop takes the batch on top, or nil.
func (s *freshStack) pop() *freeList {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		return nil
	}
	s.n--
	f := s.fl[s.n]
	s.fl[s.n] = nil
	return f
}

// freeList is a batch of recycled deliveries.
type freeList struct{ ds []*delivery }

// freeBatch is how many deliveries a worker collects before it passes them
// on.
const freeBatch = 32

// getDelivery returns a recycled delivery, or a new one: from the batch
// this P's Publishes use, else the freshest batch passed on, else one
// from the pool.
func getDelivery() *delivery {
	var f *freeList
	if v := partial.Get(); v != nil {
		f = v.(*freeList)
	} else if f = fresh.pop(); f == nil {
		v := full.Get()
		if v == nil {
			return new(delivery)
		}
		f = v.(*freeList)
	}
	n := len(f.ds) - 1
	d := f.ds[n]
	f.ds[n] = nil
	f.ds = f.ds[:n]
	if n > 0 {
		partial.Put(f)
	} else {
		empty.Put(f)
	}
	return d
}

// Limits on what a recycled delivery keeps, so one large message does not
// pin its buffers in the pool.
const (
	maxPooledBody   = 64 << 10
	maxPooledHeader = 64
)

// newDelivery returns a copy of m for group, in a recycled delivery.
func newDelivery(m *transport.Message, topic, group string, now time.Time) *delivery {
	d := getDelivery()
	header, body := d.msg.Header, d.msg.Body
	d.msg = transport.Message{ID: m.ID, Key: m.Key, Topic: topic, Group: group, Time: now}
	d.attempt, d.gate = 0, nil
	if m.Header != nil {
		d.msg.Header = d.copyHeader(header, m.Header)
	}
	if m.Body != nil {
		if body == nil {
			body = make([]byte, 0, len(m.Body))
		}
		d.msg.Body = append(body[:0], m.Body...)
	}
	return d
}

// copyHeader returns header (d's recycled map, or nil) holding src's
// entries exactly, and keeps their names in d.hkeys.
//
// Most publishers send the same header names every time: when src has as
// many names as the last copy and each of them, only their values are
// looked at (and written where they differ), without ranging over src (a
// map iteration's start, its random offset included, and a hashed write
// per entry were a quarter of a Publish with one header). header then
// holds every name of hkeys; with as many entries as hkeys it holds no
// other (a handler may have added some), and src's names are hkeys too.
// Otherwise header is cleared and filled from src.
func (d *delivery) copyHeader(header, src map[string]string) map[string]string {
	if header != nil && len(src) == len(d.hkeys) {
		same := true
		for _, k := range d.hkeys {
			v, ok := src[k]
			if !ok {
				same = false
				break
			}
			if old, ok := header[k]; !ok || old != v {
				header[k] = v
			}
		}
		if same && len(header) == len(d.hkeys) {
			return header
		}
	}
	if header == nil {
		header = make(map[string]string, len(src))
	} else {
		clear(header)
	}
	d.hkeys = d.hkeys[:0]
	for k, v := range src {
		header[k] = v
		d.hkeys = append(d.hkeys, k)
	}
	return header
}

// recycle keeps d, whose handler returned nil, in w's batch of recycled
// deliveries, which goes to the pool once full.
func (w *worker) recycle(d *delivery) {
	if cap(d.msg.Body) > maxPooledBody {
		d.msg.Body = nil
	}
	if len(d.msg.Header) > maxPooledHeader || cap(d.hkeys) > maxPooledHeader {
		d.msg.Header, d.hkeys = nil, nil
	}
	if w.free == nil {
		if v := empty.Get(); v != nil {
			w.free = v.(*freeList)
		} else {
			w.free = &freeList{ds: make([]*delivery, 0, freeBatch)}
		}
	}
	w.free.ds = append(w.free.ds, d)
	if len(w.free.ds) == freeBatch {
		w.passFree()
	}
}

// passFree passes w's batch of recycled deliveries, which must have one,
// on to Publish (fresh).
func (w *worker) passFree() {
	fresh.push(w.free)
	w.free = nil
}
