package nats_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
	"github.com/busway/busway/transport/transporttest"
)

// onEachServer runs f on a fresh embedded server and, when
// BUS_TEST_NATS_URL is set, on the real server with a stream of its own.
func onEachServer(t *testing.T, f func(t *testing.T, cfg busnats.Config)) {
	t.Run("embedded", func(t *testing.T) { f(t, embeddedConfig(t)) })
	t.Run("real", func(t *testing.T) {
		url := realURL()
		if url == "" {
			t.Skip("BUS_TEST_NATS_URL is not set")
		}
		f(t, realConfig(t, url))
	})
}

// TestSameIDOnManyTopics: one set of events published to 20 topics (one
// stream, one duplicate window) reaches all 20 with the IDs the publisher
// set; a re-send of the set to one topic is still dropped as a duplicate.
func TestSameIDOnManyTopics(t *testing.T) {
	onEachServer(t, func(t *testing.T, cfg busnats.Config) {
		tr := open(t, cfg)
		defer tr.Close()
		const topics, events = 20, 5
		base := transporttest.UniqueTopic(t)
		var mu sync.Mutex
		got := map[string]int{} // "topic id" -> deliveries
		for i := range topics {
			topic := fmt.Sprintf("%s-%d", base, i)
			subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
				mu.Lock()
				got[m.Topic+" "+m.ID]++
				mu.Unlock()
				return nil
			}, transport.SubscribeOptions{Group: "g"})
		}
		set := func() []*transport.Message {
			msgs := make([]*transport.Message, events)
			for j := range msgs {
				msgs[j] = &transport.Message{ID: fmt.Sprintf("ev-%d", j), Key: "k", Body: []byte("x"),
					Header: map[string]string{transport.HeaderID: fmt.Sprintf("ev-%d", j)}}
			}
			return msgs
		}
		for i := range topics {
			if err := tr.Publish(ctxT(t), fmt.Sprintf("%s-%d", base, i), set()...); err != nil {
				t.Fatal(err)
			}
		}
		// A true re-send to topic 0, batched and single.
		if err := tr.Publish(ctxT(t), base+"-0", set()...); err != nil {
			t.Fatal(err)
		}
		if err := tr.Publish(ctxT(t), base+"-0", set()[0]); err != nil {
			t.Fatal(err)
		}
		count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
		deadline := time.Now().Add(20 * time.Second)
		for count() < topics*events && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		reached := map[string]bool{}
		for k := range got {
			var topic, id string
			fmt.Sscan(k, &topic, &id)
			reached[topic] = true
		}
		mu.Unlock()
		if len(reached) != topics || count() != topics*events {
			t.Fatalf("the events reached %d of %d topics (%d of %d deliveries): %v", len(reached), topics, count(), topics*events, got)
		}
		if n := streamMsgs(t, tr); n != topics*events {
			t.Fatalf("stream holds %d messages, want %d (the re-sends to topic 0 deduplicated)", n, topics*events)
		}
		time.Sleep(100 * time.Millisecond) // a duplicate delivery would show now
		mu.Lock()
		defer mu.Unlock()
		for i := range topics {
			for j := range events {
				k := fmt.Sprintf("%s-%d ev-%d", base, i, j)
				if got[k] != 1 {
					t.Errorf("%s delivered %d times, want 1", k, got[k])
				}
			}
		}
	})
}
