package kafka

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// receive subscribes to topic and returns the first message with id.
func receive(t *testing.T, tr *Transport, topic, id string) *transport.Message {
	t.Helper()
	got := make(chan *transport.Message, 1)
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		if m.ID == id {
			select {
			case got <- m.Clone():
			default:
			}
		}
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	select {
	case m := <-got:
		return m
	case <-time.After(30 * time.Second):
		t.Fatalf("%s not delivered", id)
		return nil
	}
}

// The broker limits the record batch as sent, compressed: a 2 MiB body
// that compresses small is published and delivered intact, although it is
// over MaxMessageBytes uncompressed.
func TestCompressedBodyOverTheLimitUncompressed(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.Compression = "gzip"
	tr := open(t, cfg) // MaxMessageBytes: the default, 1 MiB + 64 KiB
	topic := transporttest.UniqueTopic(t)
	body := bytes.Repeat([]byte("busway compresses well. "), 2<<20/24)
	if err := tr.Publish(t.Context(), topic, &transport.Message{ID: "big", Key: "k", Body: body}); err != nil {
		t.Fatalf("Publish of a %d-byte body that compresses to %d bytes: %v", len(body), tr.batchSize([]*transport.Message{{ID: "big", Key: "k", Body: body}}, time.Now()), err)
	}
	m := receive(t, tr, topic, "big")
	if !bytes.Equal(m.Body, body) {
		t.Fatalf("delivered a body of %d bytes, want the %d published", len(m.Body), len(body))
	}
}

// Publish refuses a message exactly when the broker would: a record batch
// of exactly MaxMessageBytes as sent is accepted by the broker (on a topic
// the transport created), one byte more is refused by Publish with
// ErrMessageTooLarge before sending, and the broker refuses it too when a
// transport with a larger limit sends it. With and without compression.
func TestSizeLimitIsTheBrokers(t *testing.T) {
	for _, comp := range []string{"none", "gzip", "lz4"} {
		t.Run(comp, func(t *testing.T) {
			c := newCluster(t)
			cfg := testConfig(c.ListenAddrs())
			cfg.Compression = comp
			cfg.MaxMessageBytes = 10000
			tr := open(t, cfg)
			cfg.MaxMessageBytes = 1 << 20
			loose := open(t, cfg)
			topic := transporttest.UniqueTopic(t)
			if _, err := tr.partitions(t.Context(), topic); err != nil { // created with max.message.bytes 10000
				t.Fatal(err)
			}
			noise := make([]byte, 20000) // incompressible, so the size grows with the body
			for i := range noise {
				noise[i] = byte(rand.Uint32())
			}
			msg := func(n int) *transport.Message {
				return &transport.Message{ID: "m", Key: "k", Header: map[string]string{"ce_type": "t"}, Body: noise[:n]}
			}
			now := time.Now()
			size := func(n int) int { return tr.batchSize([]*transport.Message{msg(n)}, now) }
			// The largest body whose batch fits: binary search, then steps
			// (compressed sizes may not grow with every byte).
			lo, hi := 0, len(noise)
			for lo < hi {
				if mid := (lo + hi + 1) / 2; size(mid) <= 10000 {
					lo = mid
				} else {
					hi = mid - 1
				}
			}
			n := lo
			for size(n+1) <= 10000 {
				n++
			}
			t.Logf("a body of %d bytes makes a batch of %d bytes, %d bytes one of %d", n, tr.batchSize([]*transport.Message{msg(n)}, now),
				n+1, tr.batchSize([]*transport.Message{msg(n + 1)}, now))
			if err := tr.Publish(t.Context(), topic, msg(n)); err != nil {
				t.Fatalf("a batch at the limit: %v", err)
			}
			err := tr.Publish(t.Context(), topic, msg(n+1))
			var pe *transport.PublishError
			if !errors.Is(err, transport.ErrMessageTooLarge) || !errors.As(err, &pe) || len(pe.Failures) != 1 {
				t.Fatalf("a batch one byte over the limit: %v, want ErrMessageTooLarge from Publish", err)
			}
			t.Logf("Publish: %v", err)
			err = loose.Publish(t.Context(), topic, msg(n+1))
			if !errors.Is(err, transport.ErrMessageTooLarge) {
				t.Fatalf("the broker took a batch one byte over its limit (%v): Publish refused a message the broker accepts", err)
			}
			t.Logf("the broker: %v", err)
		})
	}
}

// A topic whose limit is below MaxMessageBytes (made elsewhere): the broker
// refuses the partition's batch; Publish splits it, and only the message
// that is too large alone fails, with ErrMessageTooLarge; the messages
// before and after it, same key, are accepted.
func TestBrokerRefusalFailsOnlyTheLargeMessage(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)
	if err := tr.createTopicWith(t.Context(), topic, []kafkago.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: "5000"}}); err != nil {
		t.Fatal(err)
	}
	msgs := []*transport.Message{
		{ID: "before", Key: "k", Body: make([]byte, 2000)},
		{ID: "big", Key: "k", Body: make([]byte, 6000)},
		{ID: "after", Key: "k", Body: make([]byte, 2000)},
	}
	err := tr.Publish(t.Context(), topic, msgs...)
	var pe *transport.PublishError
	if !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].ID != "big" || !errors.Is(pe.Failures[0].Err, transport.ErrMessageTooLarge) {
		t.Fatalf("Publish: %v, want ErrMessageTooLarge for big only", err)
	}
	t.Logf("Publish: %v", err)
	receive(t, tr, topic, "after")
	receive(t, tr, topic, "before")
}
