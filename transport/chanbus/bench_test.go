package chanbus

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/busway/busway/transport"
)

// BenchmarkPublishHandle measures publish -> handler throughput, one message
// per iteration: chanbus (one subscription, Concurrency 1, 16 keys) beside a
// raw buffered Go channel with one consumer goroutine. chanbus does more per
// message than the channel: it validates the topic, copies the message (its
// Header map and Body, so neither the publisher nor another group shares
// it, into recycled deliveries), stamps Time, and routes by key to a shard
// with one owner.
func BenchmarkPublishHandle(b *testing.B) {
	body := make([]byte, 64)
	msgs := make([]*transport.Message, 16)
	for i := range msgs {
		msgs[i] = &transport.Message{
			ID:     fmt.Sprintf("id-%d", i),
			Key:    fmt.Sprintf("key-%d", i),
			Header: map[string]string{transport.HeaderType: "bench.v1"},
			Body:   body,
		}
	}

	b.Run("busway", func(b *testing.B) {
		tr := New()
		defer tr.Close()
		ctx := context.Background()
		var n atomic.Int64
		done := make(chan struct{})
		target := int64(b.N)
		sub, err := tr.Subscribe(ctx, "bench", func(_ context.Context, m *transport.Message) error {
			if n.Add(1) == target {
				close(done)
			}
			return nil
		}, transport.SubscribeOptions{Group: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close(ctx)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if err := tr.Publish(ctx, "bench", msgs[i%len(msgs)]); err != nil {
				b.Fatal(err)
			}
		}
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})

	b.Run("raw-chan", func(b *testing.B) {
		// Buffered like one chanbus shard (DefaultBuffer): the reference a
		// hand-written in-process queue would use.
		ch := make(chan *transport.Message, DefaultBuffer)
		done := make(chan struct{})
		handle := func(_ context.Context, m *transport.Message) error { return nil }
		go func() {
			defer close(done)
			ctx := context.Background()
			for m := range ch {
				_ = handle(ctx, m)
			}
		}()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			ch <- msgs[i%len(msgs)]
		}
		close(ch)
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}
