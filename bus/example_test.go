package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// A handler subscribed, the bus started, an event published and handled.
func Example() {
	ctx := context.Background()
	t := chanbus.New() // in-process; nats.New or kafka.New in production
	b := bus.New(t, bus.WithSource("orders-svc"))

	_, err := bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		fmt.Printf("billing: %s %s from %s: order %s, %d cents\n", e.Type, e.Key, e.Source, e.Data.ID, e.Data.Amount)
		return nil
	})
	if err != nil {
		panic(err)
	}
	if err := b.Start(ctx); err != nil {
		panic(err)
	}
	if err := bus.Publish(ctx, b, OrderCreated{ID: "42", Amount: 1999}, bus.WithKey("customer-7")); err != nil {
		panic(err)
	}
	_ = t.WaitIdle(ctx) // for the example's output; a service would not wait
	if err := b.Shutdown(ctx); err != nil {
		panic(err)
	}
	fmt.Println(b.Stats().Handled, "handled")
	// Output:
	// billing: OrderCreated customer-7 from orders-svc: order 42, 1999 cents
	// 1 handled
}

// Two event types share a topic, so that events of one order keep their
// order; every group gets every event and handles the types it knows.
func ExampleSubscribe() {
	ctx := context.Background()
	t := chanbus.New()
	b := bus.New(t)
	_ = bus.Register[OrderCreated](b, "orders")
	_ = bus.Register[OrderShipped](b, "orders")

	var mu sync.Mutex
	var lines []string
	log := func(s string) { mu.Lock(); lines = append(lines, s); mu.Unlock() }
	_, _ = bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		log("billing: bill order " + e.Data.ID)
		return nil
	})
	_, _ = bus.Subscribe(b, "shipping", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		log("shipping: pack order " + e.Data.ID)
		return nil
	})
	_, _ = bus.Subscribe(b, "shipping", func(ctx context.Context, e bus.Event[OrderShipped]) error {
		log("shipping: order " + e.Data.ID + " left the warehouse")
		return nil
	}, bus.WithConcurrency(4))
	_ = b.Start(ctx)

	_ = bus.Publish(ctx, b, OrderCreated{ID: "1"}, bus.WithKey("1"))
	_ = bus.Publish(ctx, b, OrderShipped{ID: "1"}, bus.WithKey("1"))
	_ = t.WaitIdle(ctx)
	_ = b.Shutdown(ctx)

	slices.Sort(lines) // the groups run in parallel
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Printf("%+v\n", b.Stats())
	// Output:
	// billing: bill order 1
	// shipping: order 1 left the warehouse
	// shipping: pack order 1
	// {Published:2 Handled:3 Failed:0 Unknown:1 Fallback:0}
}

// A handler's error means the event is delivered again; a permanent error
// (a body that does not decode, bus.Permanent) is not retried by the Retry
// middleware and goes to the dead-letter topic.
func ExamplePublish() {
	ctx := context.Background()
	t := chanbus.New(chanbus.WithBackoff(1e6, 1e6)) // retry after 1ms
	b := bus.New(t, bus.WithSource("orders-svc"))
	billed := make(chan struct{})
	_, _ = bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		if e.Attempt < 3 {
			return errors.New("payment service unavailable")
		}
		fmt.Printf("attempt %d: billed order %s (subject %s, tenant %s)\n", e.Attempt, e.Data.ID, e.Subject, e.Header["ce_tenant"])
		close(billed)
		return nil
	})
	_ = b.Start(ctx)
	defer b.Shutdown(ctx)

	err := bus.Publish(ctx, b, OrderCreated{ID: "42", Amount: 1999},
		bus.WithKey("42"), bus.WithSubject("orders/42"), bus.WithHeader("ce_tenant", "acme"))
	fmt.Println("published:", err)
	<-billed
	// Output:
	// published: <nil>
	// attempt 3: billed order 42 (subject orders/42, tenant acme)
}

// A message of another CloudEvents producer (here as a NATS or Kafka
// transport delivers it, headers in canonical spelling) decodes into a
// typed event; one whose body does not fit the type gives a permanent
// error naming the event, the topic and the Go type.
func ExampleDecode() {
	m := &transport.Message{
		Topic: "orders",
		Header: map[string]string{
			"ce_specversion": "1.0", "ce_id": "A234-1234-1234", "ce_source": "/legacy/shop",
			"ce_type": "OrderCreated", "ce_time": "2018-04-05T17:31:00Z", "content-type": "application/json",
		},
		Body: []byte(`{"id":"7","amount":300}`),
	}
	e, err := bus.Decode[OrderCreated](bus.JSON, m)
	fmt.Println(e.ID, e.Source, e.Time.Year(), e.Data, err)

	m.Body = []byte(`{"id":7}`)
	_, err = bus.Decode[OrderCreated](bus.JSON, m)
	fmt.Println(bus.IsPermanent(err), err)
	// Output:
	// A234-1234-1234 /legacy/shop 2018 {7 300} <nil>
	// true decode event "A234-1234-1234" on topic "orders" of type "OrderCreated" into bus_test.OrderCreated: json: cannot unmarshal number into Go struct field OrderCreated.id of type string
}

// Messages of types that no handler of their group knows go to the
// fallback handler when one is set (else they are acknowledged and
// counted in Stats.Unknown).
func ExampleWithFallback() {
	ctx := context.Background()
	t := chanbus.New()
	b := bus.New(t, bus.WithFallback(func(ctx context.Context, m *transport.Message) error {
		fmt.Printf("fallback: group %s got a %s\n", m.Group, m.Header[transport.HeaderType])
		return nil
	}))
	_ = bus.Register[OrderShipped](b, "OrderCreated") // shares OrderCreated's topic
	_, _ = bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error { return nil })
	_ = b.Start(ctx)
	_ = bus.Publish(ctx, b, OrderShipped{ID: "1"})
	_ = t.WaitIdle(ctx)
	_ = b.Shutdown(ctx)
	// Output:
	// fallback: group billing got a OrderShipped
}
