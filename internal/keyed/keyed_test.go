package keyed

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPerKeyOrderAndParallelism(t *testing.T) {
	p := New(4, 2)
	var (
		mu      sync.Mutex
		got     = map[string][]int{}
		running atomic.Int32
		peak    atomic.Int32
	)
	keys := []string{"a", "b", "c", "d", "e", "f"}
	for i := range 50 {
		for _, k := range keys {
			if err := p.Submit(context.Background(), k, func() {
				n := running.Add(1)
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
				time.Sleep(50 * time.Microsecond)
				running.Add(-1)
				mu.Lock()
				got[k] = append(got[k], i)
				mu.Unlock()
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	p.Close()
	for _, k := range keys {
		if len(got[k]) != 50 {
			t.Fatalf("key %s: %d runs, want 50", k, len(got[k]))
		}
		for i, v := range got[k] {
			if v != i {
				t.Fatalf("key %s: run %d was submission %d: out of order", k, i, v)
			}
		}
	}
	if peak.Load() > 4 {
		t.Fatalf("peak concurrency %d > 4 workers", peak.Load())
	}
}

func TestSubmitBlocksWhenFullAndHonoursCtx(t *testing.T) {
	p := New(1, 0)
	defer p.Close()
	release := make(chan struct{})
	started := make(chan struct{})
	if err := p.Submit(context.Background(), "k", func() { close(started); <-release }); err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.Submit(ctx, "k", func() {}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit on a full queue = %v, want DeadlineExceeded", err)
	}
	close(release)
}

func TestSubmitAfterClose(t *testing.T) {
	p := New(2, 1)
	p.Close()
	p.Close()
	if err := p.Submit(context.Background(), "", func() {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close = %v, want ErrClosed", err)
	}
}
