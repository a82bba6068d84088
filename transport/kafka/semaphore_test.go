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
		t.Fatalf("stuck: %d slots held, room wanted: %v", s.held(), s.wanted.Load())
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

// acquireUpTo takes what is free, up to what is asked, never more than
// the semaphore's slots, and waits for one slot when none is free.
func TestSemaphoreAcquireUpTo(t *testing.T) {
	s := newSemaphore(10)
	ctx := context.Background()
	for _, c := range []struct{ ask, want int }{{4, 4}, {64, 6}} {
		if n, err := s.acquireUpTo(ctx, c.ask); n != c.want || err != nil {
			t.Fatalf("acquireUpTo(%d) with %d held = %d, %v; want %d", c.ask, s.held(), n, err, c.want)
		}
	}
	got := make(chan int)
	go func() {
		n, err := s.acquireUpTo(ctx, 5)
		if err != nil {
			t.Error(err)
		}
		got <- n
	}()
	select {
	case n := <-got:
		t.Fatalf("acquireUpTo on a full semaphore took %d slots at once", n)
	case <-time.After(20 * time.Millisecond):
	}
	s.release()
	s.release()
	if n := <-got; n != 1 {
		t.Fatalf("acquireUpTo that waited took %d slots, want 1", n)
	}
	if n := s.held(); n != 9 {
		t.Fatalf("%d held, want 9", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	s.acquire(ctx)
	if n, err := s.acquireUpTo(cctx, 3); n != 0 || err != context.Canceled {
		t.Fatalf("acquireUpTo on a full semaphore with its ctx ended = %d, %v", n, err)
	}
}
