package kafka

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/internal/dispatch"
)

// newTestSubscription is a subscription with its workers and no consumer
// group, for driving dispatch and step directly.
func newTestSubscription(t *testing.T, h transport.Handler, workers int) *subscription {
	t.Helper()
	cfg, err := Config{Brokers: []string{"localhost"}, RetryBackoff: time.Hour, RetryBackoffMax: time.Hour}.resolve()
	if err != nil {
		t.Fatal(err)
	}
	s := &subscription{
		t:        &Transport{cfg: cfg},
		topic:    "t",
		group:    "g",
		h:        h,
		log:      slog.New(slog.DiscardHandler),
		d:        dispatch.New[*job](dispatch.Config{}),
		inflight: newSemaphore(64),
		window:   64,
	}
	s.runCtx, s.cancelRun = context.WithCancel(context.Background())
	s.workers.Add(workers)
	for range workers {
		go s.work(nil)
	}
	return s
}

func newTestPartition(s *subscription, id int) *partition {
	p := &partition{id: id, idText: strconv.Itoa(id), next: -1, committed: -1, draining: make(chan struct{}), advanced: make(chan struct{}, 1)}
	p.ctx, p.cancel = context.WithCancel(s.runCtx)
	return p
}

// One key's messages from two partitions share a lane. When a
// failing message of each partition is abandoned in turn (both partitions
// draining), the later message of the first partition must not run: it
// follows an abandoned message of its key and partition, and is
// redelivered after it.
func TestKeyQueueAbandonsEveryPartition(t *testing.T) {
	var mu sync.Mutex
	var handled []string
	called := make(chan string, 16)
	s := newTestSubscription(t, func(_ context.Context, m *transport.Message) error {
		called <- m.ID
		mu.Lock()
		defer mu.Unlock()
		if m.ID == "p1-a" || m.ID == "p2-b" {
			return errors.New("fails")
		}
		handled = append(handled, m.ID)
		return nil
	}, 1)
	p1, p2 := newTestPartition(s, 1), newTestPartition(s, 2)
	rec := func(p *partition, id string, off int64) job {
		j := job{buf: &respBuf{p: p, refs: 1}, key: "k", off: off}
		j.setRecord(nil, []header{{key: idHeader, value: id}})
		return j
	}
	for _, j := range []job{rec(p1, "p1-a", 0), rec(p2, "p2-b", 0), rec(p1, "p1-c", 1)} {
		j.part().add(j.off)
		if _, err := s.dispatch(context.Background(), j.part(), []job{j}); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(want string) {
		t.Helper()
		select {
		case id := <-called:
			if id != want {
				t.Fatalf("handler called with %s, want %s", id, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("handler not called with %s", want)
		}
	}
	wait("p1-a")
	close(p1.draining) // p1-a, waiting for its retry, is abandoned
	wait("p2-b")
	close(p2.draining) // and p2-b
	done := make(chan struct{})
	go func() {
		<-p1.idleChan()
		<-p2.idleChan()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("partitions did not drain")
	}
	s.stopWorkers()
	s.cancelRun()
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(handled, "p1-c") {
		t.Errorf("p1-c was handled although p1-a, before it in its key and partition, was abandoned (handled: %v)", handled)
	}
	if p1.next != -1 {
		t.Errorf("partition 1 would commit %d, past its abandoned offset 0", p1.next)
	}
}
