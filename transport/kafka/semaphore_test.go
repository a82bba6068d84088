package kafka

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Acquirers (the fetching goroutines) and releasers (the workers) racing
// on a semaphore never hold more than its slots, and every acquirer that
// waits for a slot gets one when a release makes room: no wake-up is lost.
func TestSemaphore(t *testing.T) {
	const max, acquirers, each = 4, 3, 20000
	s := newSemaphore(max)
	held := make(chan struct{}, acquirers*each)
	var over atomic.Int64
	var wg sync.WaitGroup
	for range acquirers {
		wg.Go(func() {
			for range each {
				if err := s.acquire(context.Background()); err != nil {
					t.Error(err)
					return
				}
				if n := s.held(); n > max {
					over.Store(int64(n))
				}
				held <- struct{}{}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		for range acquirers * each {
			<-held
			s.release()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("stuck: %d slots held, %d waiters", s.held(), s.waiters.Load())
	}
	wg.Wait()
	if n := over.Load(); n > 0 {
		t.Errorf("%d slots held, the semaphore has %d", n, max)
	}
	if n := s.held(); n != 0 {
		t.Errorf("%d slots held after every release", n)
	}

	// A full semaphore: acquire waits until its ctx ends.
	for range max {
		if err := s.acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.acquire(ctx); err != context.DeadlineExceeded {
		t.Errorf("acquire on a full semaphore: %v, want context.DeadlineExceeded", err)
	}
	if n := s.held(); n != max {
		t.Errorf("%d slots held, want %d", n, max)
	}
}
