package nats_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/nats"
)

// A single binary with an embedded JetStream server: durable events with no
// infrastructure. Pointing at a cluster later is a change of Config (or of
// the URL: nats://embedded?store_dir=... becomes nats://host:4222).
func ExampleNew_embedded() {
	dir, err := os.MkdirTemp("", "busway-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tr, err := nats.New(ctx, nats.Config{Embedded: &nats.EmbeddedConfig{StoreDir: dir, NoListen: true}})
	if err != nil {
		fmt.Println("open:", err)
		return
	}
	defer tr.Close()

	got := make(chan string, 1)
	sub, err := tr.Subscribe(ctx, "orders", func(_ context.Context, m *transport.Message) error {
		got <- fmt.Sprintf("%s key=%s type=%s attempt=%d", m.ID, m.Key, m.Header[transport.HeaderType], m.Attempt)
		return nil
	}, transport.SubscribeOptions{Group: "billing"})
	if err != nil {
		fmt.Println("subscribe:", err)
		return
	}
	defer sub.Close(ctx)

	err = tr.Publish(ctx, "orders", &transport.Message{
		ID: "order-42-created", Key: "order-42", Body: []byte(`{"id":"42"}`),
		Header: map[string]string{transport.HeaderType: "order.created"},
	})
	if err != nil {
		fmt.Println("publish:", err)
		return
	}
	fmt.Println(<-got)
	// Output: order-42-created key=order-42 type=order.created attempt=1
}
