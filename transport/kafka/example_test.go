package kafka_test

import (
	"context"
	"fmt"
	"log"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/kafka"
)

// A publish and its delivery, on an in-process kfake cluster standing in
// for Kafka.
func Example() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	ctx := context.Background()
	t, err := kafka.New(ctx, kafka.Config{
		Brokers: cluster.ListenAddrs(),
		Topics:  kafka.Provisioning{Partitions: 3},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()

	got := make(chan *transport.Message, 1)
	sub, err := t.Subscribe(ctx, "orders", func(_ context.Context, m *transport.Message) error {
		got <- m.Clone()
		return nil
	}, transport.SubscribeOptions{Group: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close(ctx)

	err = t.Publish(ctx, "orders", &transport.Message{
		ID:     "evt-1",
		Key:    "order-42",
		Header: map[string]string{transport.HeaderType: "order.created"},
		Body:   []byte(`{"id":42}`),
	})
	if err != nil {
		log.Fatal(err)
	}
	m := <-got
	fmt.Println(m.ID, m.Key, m.Header[transport.HeaderType], string(m.Body), m.Attempt)
	// Output: evt-1 order-42 order.created {"id":42} 1
}
