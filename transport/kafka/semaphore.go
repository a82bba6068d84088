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
type semaphore struct {
	n       atomic.Int64 // held slots, at most max
	max     int64
	waiters atomic.Int32 // acquirers waiting (or about to) for a release

	mu   sync.Mutex
	room chan struct{} // closed by a release while acquirers wait; nil when none waits
}

func newSemaphore(max int) *semaphore { return &semaphore{max: int64(max)} }

// acquire takes a slot, waiting while all are held until ctx ends.
func (s *semaphore) acquire(ctx context.Context) error {
	for {
		if v := s.n.Load(); v < s.max {
			if s.n.CompareAndSwap(v, v+1) {
				return nil
			}
			continue
		}
		s.mu.Lock()
		// Registered before the check: a release after the check sees the
		// waiter, and closes room (it takes mu, so after room is set).
		s.waiters.Add(1)
		if s.n.Load() < s.max {
			s.waiters.Add(-1)
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
			s.waiters.Add(-1)
		case <-ctx.Done():
			s.waiters.Add(-1)
			return ctx.Err()
		}
	}
}

// acquireUpTo takes as many free slots as there are, up to n (at least
// 1), waiting while all are held until ctx ends, and returns how many it
// took: a producer with n messages at once takes its slots in one step.
func (s *semaphore) acquireUpTo(ctx context.Context, n int) (int, error) {
	for {
		v := s.n.Load()
		if v >= s.max {
			if err := s.acquire(ctx); err != nil { // waits for a slot, takes it
				return 0, err
			}
			return 1, nil
		}
		k := min(int64(n), s.max-v)
		if s.n.CompareAndSwap(v, v+k) {
			return int(k), nil
		}
	}
}

// release gives a slot back and wakes the acquirers waiting for one (they
// try again).
func (s *semaphore) release() {
	s.n.Add(-1)
	if s.waiters.Load() > 0 {
		s.mu.Lock()
		if s.room != nil {
			close(s.room)
			s.room = nil
		}
		s.mu.Unlock()
	}
}

// held is the number of held slots.
func (s *semaphore) held() int { return int(s.n.Load()) }
