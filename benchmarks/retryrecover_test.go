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
	"github.com/busway/busway/transport/chanbus"
)

// OrderPlaced is the event both sides publish and decode.
type OrderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// BenchmarkRetryRecover: the typed publish -> typed handler path with retry
// and panic recovery middleware, in process. Each iteration publishes one
// event; the benchmark ends when the handler has seen them all. Both
// handlers decode the JSON body into OrderPlaced; neither fails, so the
// middleware's happy path is what is measured.
//
//   - busway: bus.Publish -> chanbus -> bus.Subscribe handler, with
//     middleware.Retry (4 attempts) and middleware.Recover.
//   - watermill: GoChannel Publish of a JSON message -> Router handler that
//     unmarshals it, with the Router's middleware.Retry (3 retries) and
//     middleware.Recoverer.
func BenchmarkRetryRecover(b *testing.B) {
	b.Run("busway", benchBusway)
	b.Run("watermill", benchWatermill)
}

func benchBusway(b *testing.B) {
	ctx := context.Background()
	bs := bus.New(chanbus.New(), bus.WithMiddleware(
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 4, InitialInterval: time.Millisecond}),
		middleware.Recover(),
	))
	var n atomic.Int64
	target := int64(b.N)
	done := make(chan struct{})
	var sum atomic.Int64
	if _, err := bus.Subscribe(bs, "billing", func(_ context.Context, e bus.Event[OrderPlaced]) error {
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
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := bus.Publish(ctx, bs, OrderPlaced{ID: strconv.Itoa(i), Amount: 1250}); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	report(b, sum.Load())
}

func benchWatermill(b *testing.B) {
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
	var n atomic.Int64
	target := int64(b.N)
	done := make(chan struct{})
	var sum atomic.Int64
	router.AddConsumerHandler("billing", "bench", pubsub, func(msg *message.Message) error {
		var e OrderPlaced
		if err := json.Unmarshal(msg.Payload, &e); err != nil {
			return err
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
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		payload, err := json.Marshal(OrderPlaced{ID: strconv.Itoa(i), Amount: 1250})
		if err != nil {
			b.Fatal(err)
		}
		if err := pubsub.Publish("bench", message.NewMessage(watermill.NewUUID(), payload)); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	report(b, sum.Load())
}

func report(b *testing.B, sum int64) {
	if sum != int64(b.N)*1250 {
		b.Fatalf("handlers saw amounts summing to %d, want %d", sum, int64(b.N)*1250)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
