package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// The recommended chain on the channel transport: a handler that keeps
// failing is retried, then dead-lettered with the reason, and acknowledged.
func ExampleChain() {
	ctx := context.Background()
	t := chanbus.New()
	defer t.Close()

	dead := make(chan *transport.Message, 1)
	dlqSub, _ := t.Subscribe(ctx, "orders.dlq", func(_ context.Context, m *transport.Message) error {
		dead <- m.Clone()
		return nil
	}, transport.SubscribeOptions{Group: "ops"})
	defer dlqSub.Close(ctx)

	chain := middleware.Chain(
		middleware.Tracing(middleware.TracingOptions{}),
		middleware.Metrics(middleware.MetricsOptions{}),
		middleware.DeadLetter(t, middleware.DeadLetterOptions{}),
		middleware.Idempotent(middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.IdempotentOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 3, InitialInterval: time.Millisecond}),
		middleware.Timeout(5*time.Second),
		middleware.Limit(middleware.NewSemaphore(8)),
		middleware.Recover(),
	)
	sub, _ := t.Subscribe(ctx, "orders", chain(func(context.Context, *transport.Message) error {
		return errors.New("payment service unavailable")
	}), transport.SubscribeOptions{Group: "billing"})
	defer sub.Close(ctx)

	_ = t.Publish(ctx, "orders", &transport.Message{ID: "order-42", Body: []byte(`{"total":1250}`)})
	m := <-dead
	fmt.Println(m.Header[transport.HeaderID], string(m.Body)) // the event's ID; the dead letter has an ID of its own
	fmt.Println(m.Header[middleware.HeaderDLQTopic], m.Header[middleware.HeaderDLQGroup], m.Header[middleware.HeaderDLQAttempts])
	fmt.Println(m.Header[middleware.HeaderDLQError])
	// Output:
	// order-42 {"total":1250}
	// orders billing 3
	// busway: after 3 attempt(s): payment service unavailable
}
