package kafka

import (
	"context"
	"strconv"
	"time"
	"unsafe"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/internal/dispatch"
)

// dispatch queues jobs (of partition p, which reserved them), each behind
// the unfinished messages of its key, as many at a time as MaxInFlight has
// room for, blocking while MaxInFlight messages are unfinished. It returns
// how many it queued: all of them, unless ctx ended first.
func (s *subscription) dispatch(ctx context.Context, p *partition, jobs []job) (int, error) {
	var items [dispatchRun]*job
	queued := 0
	for len(jobs) > 0 {
		n, err := s.inflight.acquireUpTo(ctx, min(len(jobs), len(items)))
		if err != nil {
			return queued, err
		}
		for i := range jobs[:n] {
			items[i] = &jobs[i]
		}
		// One lock per stripe and one wake-up for the n, not per message:
		// the dispatcher's Add was most of its cost (see
		// dispatch.AddAll).
		s.d.AddAll(items[:n], jobKey)
		jobs = jobs[n:]
		queued += n
	}
	return queued, nil
}

func jobKey(j *job) string { return j.key }

// lane is a key's unfinished messages, in offset order, as the dispatcher
// hands them to a worker.
type lane = dispatch.Lane[*job]

// work runs the dispatcher's ready lanes until the subscription closes,
// beginning with l when it is not nil (a lane a replacement worker takes
// over).
func (s *subscription) work(l *lane) {
	d := delivery{rel: s.inflight.releaser(int(s.workerN.Add(1)))}
	var running *lane // whose handler runs on this goroutine
	defer func() {
		if running == nil {
			s.workers.Done()
			return
		}
		// The handler called runtime.Goexit (t.FailNow in a test, say):
		// this goroutine is ending and nothing can stop that. The attempt
		// failed (transport.CallHandler logged it); a new worker takes
		// this one's place in s.workers, and the lane if it is kept.
		go s.work(s.settle(running, &d, transport.ErrHandlerGoexit))
	}()
	for {
		if l == nil {
			if l = s.d.Next(nil, nil); l == nil {
				return
			}
		}
		running = l
		l = s.step(l, &d)
		running = nil
	}
}

// delivery is the Message a worker hands its handler, reused from one
// message to the next with its maps (a Handler must not keep a Message),
// which spares allocations per message.
type delivery struct {
	rel       *releaser // the worker's, of s.inflight
	m         transport.Message
	hdr, meta map[string]string
	// offs holds the bytes of the offsets' strings (Meta's MetaOffset),
	// which point into it: appended to, never rewritten (a full one is
	// replaced), so that a message's offset costs no allocation of its own.
	offs []byte
}

// offsetText is off in decimal.
func (d *delivery) offsetText(off int64) string {
	if cap(d.offs)-len(d.offs) < 20 {
		d.offs = make([]byte, 0, 4096)
	}
	start := len(d.offs)
	d.offs = strconv.AppendInt(d.offs, off, 10)
	return unsafe.String(&d.offs[start], len(d.offs)-start)
}

// step makes one attempt at l's head, then passes l on (see advance and
// retryLater) and returns it when the calling worker keeps it, to run its
// next message. d is the calling worker's.
func (s *subscription) step(l *lane, d *delivery) *lane {
	j := l.Head()
	p := j.part()
	switch {
	case p.ctx.Err() != nil || p.abandoned(l.Key()):
		// Skipped: redelivered after the abandoned message of its key.
	case l.Attempt > 0 && isClosed(p.draining):
		// Failed before and the partition is draining: leave it to the
		// new owner, with the rest of its key.
		p.abandon(l.Key())
	default:
		l.Attempt++
		err := transport.CallHandler(p.ctx, s.log, s.h, d.fill(s, j, l.Attempt))
		return s.settle(l, d, err)
	}
	return s.advance(l, d, false)
}

// settle acts on the result err of an attempt at l's head: done, given up
// (MaxAttempts), abandoned (its partition drains), or retried later. It
// returns l when the calling worker keeps it (see advance).
func (s *subscription) settle(l *lane, d *delivery, err error) *lane {
	j := l.Head()
	p := j.part()
	switch {
	case err == nil:
		return s.advance(l, d, true)
	case p.stopping():
		p.abandon(l.Key())
	case !s.t.cfg.retry.Retries(l.Attempt):
		// Out of budget: give it up, so that its key and partition go on.
		s.log.Error("kafka: handler failed MaxAttempts times; giving the message up and committing past it", "partition", p.id,
			"offset", j.off, "id", d.m.ID, "attempts", l.Attempt, "err", err)
		return s.advance(l, d, true)
	default:
		delay := s.t.cfg.retry.Delay(l.Attempt)
		s.log.Info("kafka: handler failed; retrying in place", "partition", p.id, "offset", j.off,
			"attempt", l.Attempt, "backoff", delay, "err", err)
		s.retryLater(l, p, delay)
		return nil
	}
	return s.advance(l, d, false)
}

// advance is done with l's head, handled (its offset may be committed) or
// not (skipped or abandoned): the dispatcher passes l on to its key's next
// message, or drops it when the key has none. It returns l when the
// calling worker keeps it to run that next message now.
func (s *subscription) advance(l *lane, d *delivery, handled bool) *lane {
	j := l.Head()
	j.part().end(j, handled) // then j may be a later response's (see respBuf)
	s.inflight.releaseBy(d.rel)
	if s.d.Done(l) {
		return l
	}
	return nil
}

// retryLater holds l's head and makes l ready again after d, or at once
// when its partition starts draining or is abandoned (the next step then
// gives the message up). Only l's key waits.
func (s *subscription) retryLater(l *lane, p *partition, d time.Duration) {
	s.d.Hold(l)
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.draining:
		case <-p.ctx.Done():
		}
		s.d.Ready(l)
	}()
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// fill makes d's Message the delivery of j's record, attempt attempt.
func (d *delivery) fill(s *subscription, j *job, attempt int) *transport.Message {
	if d.meta == nil {
		d.hdr, d.meta = make(map[string]string), make(map[string]string, 2)
	}
	if len(d.hdr) > 0 {
		clear(d.hdr)
	}
	// The two keys are written over the last message's (a handler may
	// have changed the map: then it is cleared first). The partition's is
	// most often the last message's already: looking it up in a map of two
	// costs less than writing it.
	offset, part := d.offsetText(j.off), j.part().idText
	if d.meta[transport.MetaPartition] != part {
		d.meta[transport.MetaPartition] = part
	}
	d.meta[transport.MetaOffset] = offset
	if len(d.meta) != 2 {
		clear(d.meta)
		d.meta[transport.MetaPartition] = part
		d.meta[transport.MetaOffset] = offset
	}
	msg := &d.m
	*msg = transport.Message{
		Body:    j.value(),
		Topic:   s.topic,
		Group:   s.group,
		Time:    recordTime(j.ms),
		Attempt: attempt,
		Meta:    d.meta,
	}
	msg.Key = j.key
	if j.nh > 0 {
		msg.Header = d.hdr
		for _, h := range j.headers() {
			msg.Header[h.key] = h.value
		}
		if id, ok := msg.Header[idHeader]; ok {
			msg.ID = id
			delete(msg.Header, idHeader)
		} else {
			msg.ID = msg.Header[transport.HeaderID]
		}
	}
	if msg.Time.IsZero() {
		msg.Time = time.Now()
	}
	return msg
}

// recordTime is a record's timestamp, ms after the Unix epoch, as kafka-go
// reads it: zero when not positive (fill then uses the time of delivery).
func recordTime(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
