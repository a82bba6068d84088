package kafka

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// Partitions added to the topic after Subscribe (with partition watching
// and StartLatest, the defaults) have no committed offset: records produced
// to them at once, before the group notices them and rebalances, are
// delivered all the same.
func TestPartitionsAddedAfterSubscribe(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.Topics.Partitions = 2
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)

	var mu sync.Mutex
	seen := make(map[string]string) // ID -> partition
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		seen[m.ID] = m.Meta[transport.MetaPartition]
		mu.Unlock()
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	has := func(ids ...string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if _, ok := seen[id]; !ok {
					return false
				}
			}
			return true
		}
	}
	// The group is consuming the first two partitions.
	if err := tr.Publish(t.Context(), topic, &transport.Message{ID: "probe-0", Key: "a"}, &transport.Message{ID: "probe-1", Key: "b"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "the probes", has("probe-0", "probe-1"))

	res, err := tr.client.CreatePartitions(t.Context(), &kafkago.CreatePartitionsRequest{
		Topics: []kafkago.TopicPartitionsConfig{{Name: topic, Count: 6}},
	})
	if err == nil {
		err = res.Errors[topic]
	}
	if err != nil {
		t.Fatalf("CreatePartitions: %v", err)
	}
	// A producer that knows the new partitions (a fresh transport: no
	// cached metadata) publishes at once, before the group rebalances.
	pub := open(t, cfg)
	if ids, err := pub.partitions(t.Context(), topic); err != nil || len(ids) != 6 {
		t.Fatalf("the producer sees partitions %v (%v), want 6", ids, err)
	}
	const n = 300
	var ids []string
	perPartition := make(map[int]int)
	var balancer kafkago.Murmur2Balancer
	for i := range n {
		id := "m-" + strconv.Itoa(i)
		ids = append(ids, id)
		key := fmt.Sprintf("key-%d", i)
		perPartition[balancer.Balance(kafkago.Message{Key: []byte(key)}, 0, 1, 2, 3, 4, 5)]++
		if err := pub.Publish(t.Context(), topic, &transport.Message{ID: id, Key: key, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("published %d messages, by partition %v", n, perPartition)
	if perPartition[2]+perPartition[3]+perPartition[4]+perPartition[5] == 0 {
		t.Fatal("no message went to a new partition")
	}
	waitUntil(t, 60*time.Second, "every message, also those on the new partitions", has(ids...))
	mu.Lock()
	defer mu.Unlock()
	got := make(map[string]int)
	for _, id := range ids {
		got[seen[id]]++
	}
	t.Logf("delivered by partition %v", got)
}
