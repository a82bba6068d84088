package kafka

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// TestRebalance: while messages flow, a second and a third member join the
// group and leave again while 20,000 messages flow; none is lost.
func TestRebalance(t *testing.T) {
	n, spread := 20000, 10*time.Second
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.Topics.Partitions = 6
	topic, group := transporttest.UniqueTopic(t), transporttest.UniqueGroup(t)
	pub := open(t, cfg)

	var mu sync.Mutex
	seen := make(map[string]int)
	var handled atomic.Int64
	members := make(map[string]int64) // member -> messages handled
	handler := func(member string) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			mu.Lock()
			seen[m.ID]++
			members[member]++
			mu.Unlock()
			handled.Add(1)
			return nil
		}
	}
	opts := transport.SubscribeOptions{Group: group, Concurrency: 8, StartFrom: transport.StartEarliest}
	join := func(name string) transport.Subscription {
		tr := open(t, cfg)
		sub, err := tr.Subscribe(t.Context(), topic, handler(name), opts)
		if err != nil {
			t.Fatalf("%s: Subscribe: %v", name, err)
		}
		t.Logf("%s joined", name)
		return sub
	}
	leave := func(name string, sub transport.Subscription) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sub.Close(ctx); err != nil {
			t.Errorf("%s: Close: %v", name, err)
		}
		t.Logf("%s left", name)
	}

	a := join("A")
	defer leave("A", a)

	var published atomic.Int64
	pubDone := make(chan error, 1) // one result
	go func() {
		batches := n / 100
		tick := time.NewTicker(spread / time.Duration(batches))
		defer tick.Stop()
		for b := range batches {
			<-tick.C
			msgs := make([]*transport.Message, 100)
			for j := range msgs {
				i := b*100 + j
				msgs[j] = &transport.Message{ID: fmt.Sprintf("r-%d", i), Key: fmt.Sprintf("k-%d", i%211), Body: []byte("x")}
			}
			if err := pub.Publish(context.Background(), topic, msgs...); err != nil {
				pubDone <- err
				return
			}
			published.Add(100)
		}
		pubDone <- nil
	}()
	at := func(frac float64) {
		waitUntil(t, time.Minute, fmt.Sprintf("%.0f%% published", frac*100), func() bool { return published.Load() >= int64(frac*float64(n)) })
	}
	at(0.2)
	b := join("B")
	at(0.4)
	cc := join("C")
	at(0.6)
	leave("B", b)
	at(0.8)
	leave("C", cc)
	if err := <-pubDone; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	waitUntil(t, time.Minute, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d messages, %d handlings (%d duplicates), by member: %v", n, handled.Load(), handled.Load()-int64(n), members)
	for name, k := range members {
		if k == 0 {
			t.Errorf("member %s handled nothing: no rebalance happened", name)
		}
	}
}
