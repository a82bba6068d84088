package bus_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport/chanbus"
)

// BenchmarkTypedPublishHandle measures the typed path, Publish to handler
// (JSON envelope, small struct) on chanbus, beside a raw buffered Go
// channel carrying the same struct. Each iteration is one message; the
// clock stops when the last one was handled.
//
//	go test -run '^$' -bench TypedPublishHandle -benchmem ./bus
func BenchmarkTypedPublishHandle(b *testing.B) {
	b.Run("busway", func(b *testing.B) {
		ctx := context.Background()
		ct := chanbus.New()
		bb := bus.New(ct, bus.WithSource("bench"))
		var handled atomic.Int64
		done := make(chan struct{})
		_, err := bus.Subscribe(bb, "bench", func(ctx context.Context, e bus.Event[OrderCreated]) error {
			if handled.Add(1) == int64(b.N) {
				close(done)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := bb.Start(ctx); err != nil {
			b.Fatal(err)
		}
		v := OrderCreated{ID: "order-42", Amount: 1999}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if err := bus.Publish(ctx, bb, v); err != nil {
				b.Fatal(err)
			}
		}
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		if err := bb.Shutdown(ctx); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("raw-chan", func(b *testing.B) {
		ch := make(chan OrderCreated, chanbus.DefaultBuffer) // the buffer chanbus has per shard
		done := make(chan struct{})
		go func() {
			defer close(done)
			n := 0
			for range ch {
				n++
			}
			if n != b.N {
				b.Errorf("received %d of %d", n, b.N)
			}
		}()
		v := OrderCreated{ID: "order-42", Amount: 1999}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			ch <- v
		}
		close(ch)
		<-done
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}
