package benchmarks

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// BenchmarkInProc is the in-process transport level: one publisher
// goroutine, one consumer, publish to handler.
//
//   - raw-chan: a buffered Go channel (the buffer of one chanbus shard) of
//     *transport.Message and a goroutine ranging over it: the floor.
//   - watermill-gochannel: Watermill's GoChannel, Publish and the
//     subscriber's channel, each message acked.
//   - busway-chanbus: chanbus Publish to a Subscribe handler (Concurrency
//     1, 16 keys): it validates, copies the message for the group, stamps
//     Time, routes by key to a shard, and acks after the handler.
func BenchmarkInProc(b *testing.B) {
	forSizes(b, func(b *testing.B, body []byte) {
		msgs := make([]*transport.Message, 16)
		for i := range msgs {
			msgs[i] = &transport.Message{
				ID:     "id-" + strconv.Itoa(i),
				Key:    "key-" + strconv.Itoa(i),
				Header: map[string]string{transport.HeaderType: "bench.v1"},
				Body:   body,
			}
		}
		b.Run("raw-chan", func(b *testing.B) {
			ch := make(chan *transport.Message, chanbus.DefaultBuffer)
			done := make(chan struct{})
			var seen int
			go func() {
				defer close(done)
				for m := range ch {
					seen += len(m.Body)
				}
			}()
			startMeasuring(b)
			for i := range b.N {
				ch <- msgs[i%len(msgs)]
			}
			close(ch)
			<-done
			report(b)
			if seen != b.N*len(body) {
				b.Fatalf("consumer saw %d bytes, want %d", seen, b.N*len(body))
			}
		})
		b.Run("watermill-gochannel", func(b *testing.B) {
			ps := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: chanbus.DefaultBuffer}, watermill.NopLogger{})
			defer ps.Close()
			out, err := ps.Subscribe(context.Background(), "bench")
			if err != nil {
				b.Fatal(err)
			}
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			go func() {
				for m := range out {
					m.Ack()
					if n.Add(1) == target {
						close(done)
					}
				}
			}()
			wm := make([]*message.Message, b.N)
			for i := range wm {
				wm[i] = message.NewMessage("id-"+strconv.Itoa(i), body)
			}
			startMeasuring(b)
			for i := range b.N {
				if err := ps.Publish("bench", wm[i]); err != nil {
					b.Fatal(err)
				}
			}
			waitDone(b, done, time.Minute, func() string { return strconv.FormatInt(n.Load(), 10) + " handled" })
			report(b)
		})
		b.Run("busway-chanbus", func(b *testing.B) {
			tr := chanbus.New()
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
			startMeasuring(b)
			for i := range b.N {
				if err := tr.Publish(ctx, "bench", msgs[i%len(msgs)]); err != nil {
					b.Fatal(err)
				}
			}
			waitDone(b, done, time.Minute, func() string { return strconv.FormatInt(n.Load(), 10) + " handled" })
			report(b)
		})
	})
}

// BenchmarkTyped is the typed path, in process: a struct is encoded as JSON,
// published, delivered, decoded and handed to a handler, which checks it.
//
//   - busway: bus.Publish -> chanbus -> bus.Subscribe handler, no
//     middleware.
//   - busway-recover-retry: the same with middleware.Retry and
//     middleware.Recover (the recommended innermost pair).
//   - watermill-router: json.Marshal, GoChannel Publish, Router handler that
//     unmarshals, with the Router's Retry and Recoverer middleware.
//
// Nothing fails, so the middleware's happy path is what is measured.
func BenchmarkTyped(b *testing.B) {
	forSizes(b, func(b *testing.B, body []byte) {
		note := string(body)
		b.Run("busway", func(b *testing.B) { benchTypedBusway(b, note) })
		b.Run("busway-recover-retry", func(b *testing.B) {
			benchTypedBusway(b, note,
				middleware.Retry(middleware.RetryOptions{MaxAttempts: 4, InitialInterval: time.Millisecond}),
				middleware.Recover())
		})
		b.Run("watermill-router", func(b *testing.B) { benchTypedWatermill(b, note) })
	})
}

func benchTypedBusway(b *testing.B, note string, mw ...middleware.Middleware) {
	ctx := context.Background()
	bs := bus.New(chanbus.New(), bus.WithSource("bench"), bus.WithMiddleware(mw...))
	var n, sum atomic.Int64
	target := int64(b.N)
	done := make(chan struct{})
	if _, err := bus.Subscribe(bs, "billing", func(_ context.Context, e bus.Event[OrderPlaced]) error {
		if len(e.Data.Note) != len(note) {
			return bus.Permanent(errors.New("note lost"))
		}
		sum.Add(int64(e.Data.Amount))
		if n.Add(1) == target {
			close(done)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	if err := bs.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := bs.Shutdown(sctx); err != nil {
			b.Error(err)
		}
	}()
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "order-" + strconv.Itoa(i)
	}
	startMeasuring(b)
	for i := range b.N {
		if err := bus.Publish(ctx, bs, OrderPlaced{ID: ids[i%len(ids)], Amount: 1250, Note: note}); err != nil {
			b.Fatal(err)
		}
	}
	waitDone(b, done, time.Minute, func() string { return strconv.FormatInt(n.Load(), 10) + " handled" })
	report(b)
	checkSum(b, sum.Load())
}

func benchTypedWatermill(b *testing.B, note string) {
	logger := watermill.NopLogger{}
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, logger)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		b.Fatal(err)
	}
	router.AddMiddleware(
		wmw.Retry{MaxRetries: 3, InitialInterval: time.Millisecond, Logger: logger}.Middleware,
		wmw.Recoverer,
	)
	var n, sum atomic.Int64
	target := int64(b.N)
	done := make(chan struct{})
	router.AddConsumerHandler("billing", "bench", pubsub, func(msg *message.Message) error {
		var e OrderPlaced
		if err := json.Unmarshal(msg.Payload, &e); err != nil {
			return err
		}
		if len(e.Note) != len(note) {
			return errors.New("note lost")
		}
		sum.Add(int64(e.Amount))
		if n.Add(1) == target {
			close(done)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	<-router.Running()
	defer func() {
		if err := router.Close(); err != nil {
			b.Error(err)
		}
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			b.Error(err)
		}
		_ = pubsub.Close()
	}()
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = "order-" + strconv.Itoa(i)
	}
	startMeasuring(b)
	for i := range b.N {
		payload, err := json.Marshal(OrderPlaced{ID: ids[i%len(ids)], Amount: 1250, Note: note})
		if err != nil {
			b.Fatal(err)
		}
		if err := pubsub.Publish("bench", message.NewMessage(watermill.NewUUID(), payload)); err != nil {
			b.Fatal(err)
		}
	}
	waitDone(b, done, time.Minute, func() string { return strconv.FormatInt(n.Load(), 10) + " handled" })
	report(b)
	checkSum(b, sum.Load())
}

func checkSum(b *testing.B, sum int64) {
	if sum != int64(b.N)*1250 {
		b.Fatalf("handlers saw amounts summing to %d, want %d", sum, int64(b.N)*1250)
	}
}
