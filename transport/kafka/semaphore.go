package kafka

import (
	"context"
	"sync"
	"sync/atomic"
)

// semaphore counts a subscription's dispatched, unfinished messages and
// bounds them (MaxInFlight). Taking a free slot and giving it back are an
// atomic operation or two (a buffered channel, shared by the fetching
// goroutines and the workers, takes its lock for each); only an acquirer
// that finds every slot held takes the mutex and waits.
//
// The slots given back are counted per releaser (a worker), each on a
// cache line of its own: the workers, which give a slot back for every
// message, then do not write one line in turn; an acquirer, which takes
// slots a run of messages at a time, sums them.
type semaphore struct {
	taken atomic.Int64 // slots ever taken
	max   int64
	// wanted: acquirers wait (or are about to) for a release, which then
	// closes room. Set and cleared under mu.
	wanted atomic.Bool
	_      [64]byte

	given []releaser

	mu   sync.Mutex
	room chan struct{} // closed by a release while acquirers wait; nil when none waits
}

// releaser counts the slots given back through it.
type releaser struct {
	n atomic.Int64
	_ [56]byte
}

// newSemaphore returns a semaphore of slots slots with one releaser.
func newSemaphore(slots int) *semaphore { return newSemaphoreN(slots, 1) }

// newSemaphoreN returns a semaphore of slots slots with n releasers.
func newSemaphoreN(slots, n int) *semaphore {
	return &semaphore{max: int64(slots), given: make([]releaser, max(n, 1))}
}

// releaser returns releaser i (modulo their number): one per worker, or
// shared.
func (s *semaphore) releaser(i int) *releaser { return &s.given[i%len(s.given)] }

// heldBelow is taken (a count of slots ever taken) less the slots given
// back so far. As the counts only grow, an acquirer that then moves the
// count from taken to taken+k (a CompareAndSwap: nobody took slots
// meanwhile) holds, with the others, at most heldBelow(taken)+k.
func (s *semaphore) heldBelow(taken int64) int64 {
	for i := range s.given {
		taken -= s.given[i].n.Load()
	}
	return taken
}

// acquire takes a slot, waiting while all are held until ctx ends.
func (s *semaphore) acquire(ctx context.Context) error {
	for {
		if t := s.taken.Load(); s.heldBelow(t) < s.max {
			if s.taken.CompareAndSwap(t, t+1) {
				return nil
			}
			continue
		}
		s.mu.Lock()
		// Said before the check: a release after the check sees it, and
		// closes room (it takes mu, so after room is set).
		s.wanted.Store(true)
		if s.heldBelow(s.taken.Load()) < s.max {
			s.mu.Unlock()
			continue // a slot was released meanwhile
		}
		if s.room == nil {
			s.room = make(chan struct{})
		}
		room := s.room
		s.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// acquireUpTo takes as many free slots as there are, up to n (at least
// 1), waiting while all are held until ctx ends, and returns how many it
// took: a producer with n messages at once takes its slots in one step.
func (s *semaphore) acquireUpTo(ctx context.Context, n int) (int, error) {
	for {
		t := s.taken.Load()
		v := s.heldBelow(t)
		if v >= s.max {
			if err := s.acquire(ctx); err != nil { // waits for a slot, takes it
				return 0, err
			}
			return 1, nil
		}
		k := min(int64(n), s.max-v)
		if s.taken.CompareAndSwap(t, t+k) {
			return int(k), nil
		}
	}
}

// release gives a slot back through the first releaser (see releaseBy).
func (s *semaphore) release() { s.releaseBy(&s.given[0]) }

// releaseBy gives a slot back through r and wakes the acquirers waiting
// for one (they try again). Only the first release after an acquirer
// began to wait takes the mutex: it clears wanted, which a woken acquirer
// that still finds no slot sets again.
func (s *semaphore) releaseBy(r *releaser) {
	r.n.Add(1)
	if s.wanted.Load() {
		s.mu.Lock()
		if s.room != nil {
			close(s.room)
			s.room = nil
		}
		s.wanted.Store(false)
		s.mu.Unlock()
	}
}

// held is the number of held slots (see heldBelow).
func (s *semaphore) held() int { return int(s.heldBelow(s.taken.Load())) }
