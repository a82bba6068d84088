package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// A failing message is retried in place, with Attempt counting up; only its
// key waits: other keys go on, and its key's later message runs after it.
func TestRetryBlocksOnlyItsKey(t *testing.T) {
	c := newCluster(t)
	tr := open(t, testConfig(c.ListenAddrs()))
	topic := transporttest.UniqueTopic(t)
	var mu sync.Mutex
	var order []string
	attempts := make(map[string]int)
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		defer mu.Unlock()
		attempts[m.ID] = m.Attempt
		if m.ID == "a1" && m.Attempt < 4 {
			return errors.New("not yet")
		}
		order = append(order, m.ID)
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	msgs := []*transport.Message{{ID: "a1", Key: "a"}, {ID: "a2", Key: "a"}}
	for i := range 5 {
		msgs = append(msgs, &transport.Message{ID: fmt.Sprintf("b%d", i), Key: "b"})
	}
	if err := tr.Publish(t.Context(), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "all handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == len(msgs)
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("order %v", order)
	if attempts["a1"] != 4 {
		t.Errorf("a1 handled with Attempt %d at last, want 4", attempts["a1"])
	}
	ia1, ia2 := slices.Index(order, "a1"), slices.Index(order, "a2")
	if ia2 < ia1 {
		t.Errorf("a2 handled before a1: %v", order)
	}
	if slices.Index(order, "b4") > ia1 {
		t.Errorf("key b waited for a's retries: %v", order)
	}
}

// Fetching pauses at MaxInFlight unfinished messages and Concurrency
// handlers run at once, however many messages wait.
func TestBackpressure(t *testing.T) {
	c := newCluster(t)
	tr := open(t, testConfig(c.ListenAddrs()))
	topic := transporttest.UniqueTopic(t)
	release := make(chan struct{})
	var running, started, peak atomic.Int64
	sub, err := tr.Subscribe(t.Context(), topic, func(ctx context.Context, m *transport.Message) error {
		n := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		started.Add(1)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), Concurrency: 3,
		Specific: []transport.SpecificOption{MaxInFlight(10)}})
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, tr, topic, "bp", 1000, 1000)
	waitUntil(t, 20*time.Second, "three handlers running", func() bool { return running.Load() == 3 })
	time.Sleep(300 * time.Millisecond) // give fetching the chance to overrun
	s := sub.(*subscription)
	if n := s.inflight.held(); n > 10 {
		t.Errorf("%d messages in flight, MaxInFlight is 10", n)
	}
	if n := started.Load(); n != 3 {
		t.Errorf("%d handlers started, Concurrency is 3", n)
	}
	close(release)
	waitUntil(t, 30*time.Second, "all handled", func() bool { return started.Load() >= 1000 })
	if p := peak.Load(); p > 3 {
		t.Errorf("peak of %d handlers at once, Concurrency is 3", p)
	}
	if err := sub.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Close does not wait out the backoff of a message that keeps failing: it
// is left uncommitted, and the group's next member gets it again.
func TestCloseLeavesFailingMessage(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.RetryBackoff, cfg.RetryBackoffMax = time.Second, 10*time.Second
	tr := open(t, cfg)
	topic, group := transporttest.UniqueTopic(t), transporttest.UniqueGroup(t)
	var tries atomic.Int64
	opts := transport.SubscribeOptions{Group: group}
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		tries.Add(1)
		return errors.New("always fails")
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), topic, &transport.Message{ID: "poison", Key: "p"}, &transport.Message{ID: "after", Key: "p"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a first attempt", func() bool { return tries.Load() > 0 })
	start := time.Now()
	if err := sub.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("Close took %v: it waited for the retry backoff", d)
	}
	got := make(chan string, 2)
	sub2, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		got <- m.ID
		return nil
	}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close(context.Background())
	for _, want := range []string{"poison", "after"} {
		select {
		case id := <-got:
			if id != want {
				t.Fatalf("redelivered %q, want %q (in order)", id, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%q not redelivered", want)
		}
	}
}
