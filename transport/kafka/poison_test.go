package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// failingPublisher fails every publish, as a dead-letter topic whose
// brokers are down would (an error retrying may fix, so DeadLetter returns
// it and the message is not acknowledged).
type failingPublisher struct{}

func (failingPublisher) Publish(context.Context, string, ...*transport.Message) error {
	return fmt.Errorf("%w: dead-letter topic unreachable", transport.ErrUnavailable)
}

// A message whose handler keeps failing and whose dead letter cannot be
// published is given up after MaxAttempts: the 400 events behind it (its
// key's and other keys') are all handled, and the commits reach the end of
// every partition.
func TestPoisonMessageDoesNotStallPartition(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.Topics.Partitions = 1 // everything behind the poison message
	cfg.MaxAttempts = 4
	cfg.RetryBackoffMax = 100 * time.Millisecond
	tr := open(t, cfg)
	topic, group := transporttest.UniqueTopic(t), transporttest.UniqueGroup(t)

	var mu sync.Mutex
	poisonAttempts := 0
	handled := make(map[string]bool)
	h := middleware.DeadLetter(failingPublisher{}, middleware.DeadLetterOptions{})(func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if m.ID == "poison" {
			poisonAttempts++
			return errors.New("cannot handle this one")
		}
		handled[m.ID] = true
		return nil
	})
	sub, err := tr.Subscribe(t.Context(), topic, h, transport.SubscribeOptions{Group: group, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	msgs := []*transport.Message{{ID: "poison", Key: "k-0", Body: []byte("x")}}
	const follow = 400
	for i := range follow {
		msgs = append(msgs, &transport.Message{ID: fmt.Sprintf("f-%d", i), Key: fmt.Sprintf("k-%d", i%10), Body: []byte("x")})
	}
	if err := tr.Publish(t.Context(), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(handled)
	}
	deadline := time.Now().Add(30 * time.Second)
	for count() < follow && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := count(); n < follow {
		t.Fatalf("%d of the %d follow-up events handled: the poison message stalls its partition", n, follow)
	}
	waitUntil(t, 30*time.Second, "the commit past every message", func() bool {
		return committedOffsets(t, tr, topic, group)[0] == int64(len(msgs))
	})
	mu.Lock()
	defer mu.Unlock()
	if poisonAttempts != cfg.MaxAttempts {
		t.Errorf("the poison message was attempted %d times, MaxAttempts is %d", poisonAttempts, cfg.MaxAttempts)
	}
	t.Logf("%d follow-up events handled; the poison message given up after %d attempts; committed offset %d", len(handled), poisonAttempts, len(msgs))
}

// MaxAttempts -1 keeps retrying (strict at-least-once): the message is
// never given up.
func TestUnlimitedAttempts(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.MaxAttempts = -1
	cfg.RetryBackoffMax = 20 * time.Millisecond
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)
	var mu sync.Mutex
	last := 0
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		defer mu.Unlock()
		last = m.Attempt
		if m.Attempt < 25 {
			return errors.New("not yet")
		}
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	if err := tr.Publish(t.Context(), topic, &transport.Message{ID: "m", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "the 25th attempt", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return last >= 25
	})
}
