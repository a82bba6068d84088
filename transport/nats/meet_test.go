package nats_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// TestHeaderNamesAsNatsGo: Publish accepts exactly the header names nats.go
// encodes; a message with one it refuses fails alone, up front, as a
// permanent *PublishError naming it, and the others of the call are
// stored. (Values nats.go would change, with a line break or white space
// at an end, are refused too: transporttest's ValuesExactOrRefused.)
func TestHeaderNamesAsNatsGo(t *testing.T) {
	onEachServer(t, func(t *testing.T, cfg busnats.Config) {
		tr := open(t, cfg)
		defer tr.Close()
		topic := transporttest.UniqueTopic(t)
		ok := map[string]string{
			"x-error":      "first line | second: line",
			"X_Weird!#$%&": "v",
			"ce_type":      "t",
			"x-inner":      "a \t b",
		}
		bad := []string{"x error", "a:b", "a/b", "q?", "(x)", "x@y", "é", "a=b", "{x}"}
		for _, name := range bad {
			msgs := []*transport.Message{{ID: "good-" + name, Header: ok}, {ID: "bad", Header: map[string]string{name: "v"}}}
			err := tr.Publish(ctxT(t), topic, msgs...)
			var pe *transport.PublishError
			if !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].ID != "bad" || pe.Failures[0].Index != 1 ||
				!transport.IsPermanent(err) || !errors.Is(err, transport.ErrInvalidMessage) || !strings.Contains(err.Error(), name) {
				t.Fatalf("header name %q: Publish = %v, want a permanent PublishError naming message bad and the header", name, err)
			}
			// Nothing of the bad message reaches nats.go, which would
			// refuse it the same way.
			nm := natsgo.NewMsg(tr.Subject(topic))
			nm.Header.Set(name, "v")
			if _, err := tr.JetStream().PublishMsg(ctxT(t), nm); err == nil {
				t.Errorf("nats.go accepted header name %q that busway refuses", name)
			}
		}
		t.Log(fmt.Sprint(tr.Publish(ctxT(t), topic, &transport.Message{ID: "x", Header: map[string]string{"a b": "v"}})))
		if n := streamMsgs(t, tr); n != uint64(len(bad)) {
			t.Fatalf("stream holds %d messages, want the %d good ones", n, len(bad))
		}
		for name := range ok {
			nm := natsgo.NewMsg(tr.Subject(topic))
			nm.Header.Set(name, "v")
			if _, err := tr.JetStream().PublishMsg(ctxT(t), nm); err != nil {
				t.Errorf("nats.go refused header name %q that busway accepts: %v", name, err)
			}
		}
	})
}

// TestSizeAsServer: Publish counts a message's size as the server does
// (headers included), accepts one of exactly
// MaxMessageBytes and rejects one byte more, alone, as a permanent
// PublishError wrapping ErrMessageTooLarge that states both sizes.
func TestSizeAsServer(t *testing.T) {
	onEachServer(t, func(t *testing.T, cfg busnats.Config) {
		tr := open(t, cfg)
		defer tr.Close()
		topic := transporttest.UniqueTopic(t)
		limit := tr.MaxMessageBytes()
		if limit <= 0 {
			t.Fatalf("MaxMessageBytes = %d", limit)
		}
		hdr := map[string]string{"ce_type": "order.created", "x-error": "boom again", "content-type": "application/json"}
		msg := func(id string, body int) *transport.Message {
			return &transport.Message{ID: id, Key: "k", Header: hdr, Body: make([]byte, body)}
		}
		// The headers' encoded size, by publishing an empty body through
		// nats.go and asking the server what it stored.
		headers := 12 + len("Nats-Msg-Id: ") + len(tr.Subject(topic)+"/fit") + 2 + len("ce-partitionkey: k\r\n") +
			len("ce-type: order.created\r\n") + len("x-error: boom again\r\n") + len("content-type: application/json\r\n")
		fit := msg("fit", limit-headers)
		if err := tr.Publish(ctxT(t), topic, fit); err != nil {
			t.Fatalf("Publish of exactly MaxMessageBytes %d: %v", limit, err)
		}
		over := msg("ovr", limit-headers+1)
		err := tr.Publish(ctxT(t), topic, msg("a", 1), over)
		var pe *transport.PublishError
		if !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].ID != "ovr" || !transport.IsPermanent(err) ||
			!errors.Is(err, transport.ErrMessageTooLarge) || !strings.Contains(err.Error(), fmt.Sprint(limit+1)) || !strings.Contains(err.Error(), fmt.Sprint(limit)) {
			t.Fatalf("Publish one byte over = %v, want a permanent PublishError for ovr stating %d and %d", err, limit+1, limit)
		}
		t.Log(err)
		if n := streamMsgs(t, tr); n != 2 {
			t.Fatalf("stream holds %d messages, want 2 (fit and a)", n)
		}
	})
}

// TestMaxDeliverTerminates: a message whose handler fails on its last
// allowed delivery is terminated, so the consumer's ack floor moves past
// it and nothing stays pending; the next message is handled.
func TestMaxDeliverTerminates(t *testing.T) {
	onEachServer(t, func(t *testing.T, cfg busnats.Config) {
		tr := open(t, cfg)
		defer tr.Close()
		topic := transporttest.UniqueTopic(t)
		var mu sync.Mutex
		var calls []string
		subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
			mu.Lock()
			calls = append(calls, fmt.Sprintf("%s#%d", m.ID, m.Attempt))
			mu.Unlock()
			if m.ID == "poison" {
				return errors.New("always fails")
			}
			return nil
		}, transport.SubscribeOptions{Group: "g", Specific: []transport.SpecificOption{busnats.MaxDeliver(2)}})
		if err := tr.Publish(ctxT(t), topic, &transport.Message{ID: "poison"}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 10*time.Second, "two attempts", func() bool { mu.Lock(); defer mu.Unlock(); return len(calls) >= 2 })
		if err := tr.Publish(ctxT(t), topic, &transport.Message{ID: "next"}); err != nil {
			t.Fatal(err)
		}
		st, err := tr.JetStream().Stream(ctxT(t), tr.Stream())
		if err != nil {
			t.Fatal(err)
		}
		var info *jetstream.ConsumerInfo
		deadline := time.Now().Add(10 * time.Second)
		for {
			for name := range st.ConsumerNames(ctxT(t)).Name() {
				c, err := st.Consumer(ctxT(t), name)
				if err != nil {
					t.Fatal(err)
				}
				info = c.CachedInfo()
			}
			if info != nil && info.AckFloor.Stream == 2 && info.NumAckPending == 0 {
				break
			}
			if time.Now().After(deadline) {
				mu.Lock()
				t.Fatalf("ack floor %d, %d pending ack, want floor 2 and none pending (calls %v)", info.AckFloor.Stream, info.NumAckPending, calls)
			}
			time.Sleep(20 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(calls) != "[poison#1 poison#2 next#1]" {
			t.Fatalf("calls %v, want [poison#1 poison#2 next#1]", calls)
		}
	})
}

// TestInactiveThreshold: a group subscribed with InactiveThreshold keeps
// its consumer while a member pulls, for longer than the threshold, and
// the server deletes it once no member is left (a process killed before
// its DeleteGroup: here the subscription closed without one), on the
// embedded server and on the machine's.
func TestInactiveThreshold(t *testing.T) {
	onEachServer(t, func(t *testing.T, cfg busnats.Config) {
		tr := open(t, cfg)
		defer tr.Close()
		topic := transporttest.UniqueTopic(t)
		const threshold = time.Second
		durable := "inactive-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		got := make(chan struct{}, 16)
		sub, err := tr.Subscribe(ctxT(t), topic, func(context.Context, *transport.Message) error {
			got <- struct{}{}
			return nil
		}, transport.SubscribeOptions{Group: "g", Specific: []transport.SpecificOption{busnats.Durable(durable), busnats.InactiveThreshold(threshold)}})
		if err != nil {
			t.Fatal(err)
		}
		cons, err := tr.JetStream().Consumer(ctxT(t), tr.Stream(), durable)
		if err != nil {
			t.Fatal(err)
		}
		if it := cons.CachedInfo().Config.InactiveThreshold; it != threshold {
			t.Fatalf("consumer InactiveThreshold %v, want %v", it, threshold)
		}
		// An idle member still pulls: the consumer outlives the threshold.
		time.Sleep(3 * threshold)
		if err := tr.Publish(ctxT(t), topic, &transport.Message{ID: "after-idle", Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("a member idle for 3 x InactiveThreshold lost its consumer")
		}
		if err := sub.Close(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 30*time.Second, "the server to delete the inactive consumer", func() bool {
			_, err := tr.JetStream().Consumer(ctxT(t), tr.Stream(), durable)
			return errors.Is(err, jetstream.ErrConsumerNotFound)
		})
	})
}
