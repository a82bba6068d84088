package kafka

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// publishN publishes n messages "<prefix>-<i>" with keys k-<i%keys> in
// batches of 100.
func publishN(t testing.TB, tr *Transport, topic, prefix string, n, keys int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < n; i += 100 {
		var batch []*transport.Message
		for j := i; j < min(n, i+100); j++ {
			batch = append(batch, &transport.Message{
				ID:   fmt.Sprintf("%s-%d", prefix, j),
				Key:  "k-" + strconv.Itoa(j%keys),
				Body: []byte(strconv.Itoa(j)),
			})
		}
		if err := tr.Publish(ctx, topic, batch...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
}

// ledger records successful handlings: ID -> (partition, offset), and how
// many times each ID succeeded.
type ledger struct {
	mu    sync.Mutex
	where map[string][2]int64
	count map[string]int
}

func newLedger() *ledger {
	return &ledger{where: make(map[string][2]int64), count: make(map[string]int)}
}

func (l *ledger) add(m *transport.Message) {
	p, _ := strconv.ParseInt(m.Meta[transport.MetaPartition], 10, 64)
	o, _ := strconv.ParseInt(m.Meta[transport.MetaOffset], 10, 64)
	l.mu.Lock()
	l.where[m.ID] = [2]int64{p, o}
	l.count[m.ID]++
	l.mu.Unlock()
}

func (l *ledger) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.count)
}

func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCommitCorrectness: handlers finish out of order (random delays, a
// few failures retried in place); the consumer is stopped hard (no drain,
// no final commit, as a killed process); a new consumer in the group then
// handles the rest. Every message is handled at least once; nothing below
// the committed offsets is handled again; the duplicates stay within the
// in-flight window.
func TestCommitCorrectness(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.CommitInterval = 30 * time.Millisecond
	tr := open(t, cfg)
	topic, group := transporttest.UniqueTopic(t), transporttest.UniqueGroup(t)
	const n, window = 3000, 64
	publishN(t, tr, topic, "m", n, 97)

	handler := func(l *ledger) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			if m.Attempt == 1 && rand.IntN(30) == 0 {
				return fmt.Errorf("transient failure of %s", m.ID)
			}
			select {
			case <-time.After(time.Duration(rand.IntN(3000)) * time.Microsecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			l.add(m)
			return nil
		}
	}
	var crashed atomic.Bool // the first consumer stops as a killed process would: no final commits
	opts := transport.SubscribeOptions{Group: group, Concurrency: 16, StartFrom: transport.StartEarliest,
		Specific: []transport.SpecificOption{MaxInFlight(window), hooks{finalCommit: func() bool { return !crashed.Load() }}}}
	first := newLedger()
	began := time.Now()
	sub, err := tr.Subscribe(t.Context(), topic, handler(first), opts)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "half the messages", func() bool { return first.len() >= n/2 })
	crashed.Store(true)
	hard, cancel := context.WithCancel(context.Background())
	cancel()
	_ = sub.Close(hard)
	rate := float64(first.len()) / time.Since(began).Seconds()

	committed := committedOffsets(t, tr, topic, group)
	t.Logf("first consumer handled %d; committed %v", first.len(), committed)
	// Commits never pass an unfinished message: every offset below the
	// commit position was handled by the first consumer.
	below := make(map[int64]int64) // partition -> messages below its commit position
	first.mu.Lock()
	for _, w := range first.where {
		if w[1] < committed[int(w[0])] {
			below[w[0]]++
		}
	}
	first.mu.Unlock()
	for p, off := range committed {
		// Offsets are dense here (no compaction, no transactions).
		if below[int64(p)] != off {
			t.Errorf("partition %d: committed %d but the first consumer finished only %d messages below it", p, off, below[int64(p)])
		}
	}

	second := newLedger()
	tr2 := open(t, cfg)
	sub2, err := tr2.Subscribe(t.Context(), topic, handler(second), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close(context.Background())
	all := func() bool {
		first.mu.Lock()
		defer first.mu.Unlock()
		second.mu.Lock()
		defer second.mu.Unlock()
		for i := range n {
			id := "m-" + strconv.Itoa(i)
			if first.count[id] == 0 && second.count[id] == 0 {
				return false
			}
		}
		return true
	}
	waitUntil(t, 60*time.Second, "every message handled by one of the consumers", all)
	if err := sub2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	dups := 0
	for id, w := range second.where {
		if w[1] < committed[int(w[0])] {
			t.Errorf("%s at %d/%d handled again although below the committed offset %d", id, w[0], w[1], committed[int(w[0])])
		}
		if first.count[id] > 0 {
			dups++
		}
	}
	// The documented bound: per partition, MaxInFlight + CommitEvery
	// messages past the committed offset.
	every := cfg.CommitEvery
	if every == 0 {
		every = 1000 // the default
	}
	bound := len(committed) * (window + every)
	t.Logf("%d messages handled by both consumers (bound: %d partitions x (MaxInFlight %d + CommitEvery %d) = %d; %.0f msgs/s)",
		dups, len(committed), window, every, bound, rate)
	if dups > bound {
		t.Errorf("%d duplicates, more than the in-flight window allows (%d)", dups, bound)
	}
}

func committedOffsets(t testing.TB, tr *Transport, topic, group string) map[int]int64 {
	t.Helper()
	ids, err := tr.partitions(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	res, err := tr.client.OffsetFetch(t.Context(), &kafkago.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int]int64)
	for _, p := range res.Topics[topic] {
		out[p.Partition] = max(p.CommittedOffset, 0)
	}
	return out
}

// TestCloseInterruptsHeldFetch: with nothing left to read, the broker
// holds a partition reader's fetch open for FetchMaxWait; Close must not
// wait that out (kafka-go's Reader.Close would).
func TestCloseInterruptsHeldFetch(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.FetchMaxWait = time.Minute
	cfg.RequestTimeout = 2 * time.Minute
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)
	ctx := context.Background()
	if err := tr.Publish(ctx, topic, &transport.Message{Key: "k", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 1)
	sub, err := tr.Subscribe(ctx, topic, func(context.Context, *transport.Message) error {
		select {
		case handled <- struct{}{}:
		default:
		}
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-handled:
	case <-time.After(30 * time.Second):
		t.Fatal("the message was not handled")
	}
	// Every partition reader now waits in a fetch the broker holds for a
	// minute.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := sub.Close(cctx); err != nil {
		t.Fatalf("Close waited for the held fetches: %v", err)
	}
}
