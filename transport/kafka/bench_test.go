package kafka

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// Benchmarks on kfake, busway against the raw clients in the same run.
// Each iteration is one message; msgs/s is reported.
//
//	go test -run '^$' -bench . -benchmem ./transport/kafka/

const benchBatch = 100

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func benchConfig(brokers []string) Config {
	cfg := testConfig(brokers)
	cfg.CommitInterval = 0 // default 1s
	return cfg
}

func BenchmarkPublishBatch(b *testing.B) {
	c := newCluster(b)
	brokers := c.ListenAddrs()
	body := make([]byte, 100)
	batches := func(b *testing.B, send func(from, to int) error) {
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += benchBatch {
			if err := send(i, min(b.N, i+benchBatch)); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		reportRate(b)
	}

	b.Run("busway", func(b *testing.B) {
		tr := open(b, benchConfig(brokers))
		topic := transporttest.UniqueTopic(b)
		msgs := make([]*transport.Message, benchBatch)
		batches(b, func(from, to int) error {
			for i := from; i < to; i++ {
				msgs[i-from] = &transport.Message{Key: "k-" + strconv.Itoa(i%1000), Body: body}
			}
			return tr.Publish(context.Background(), topic, msgs[:to-from]...)
		})
	})

	b.Run("raw-kafka-go", func(b *testing.B) {
		topic := transporttest.UniqueTopic(b)
		kt := &kafkago.Transport{}
		defer kt.CloseIdleConnections()
		if _, err := (&kafkago.Client{Addr: kafkago.TCP(brokers...), Transport: kt}).CreateTopics(context.Background(),
			&kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{{Topic: topic, NumPartitions: 3, ReplicationFactor: -1}}}); err != nil {
			b.Fatal(err)
		}
		w := &kafkago.Writer{
			Addr:         kafkago.TCP(brokers...),
			Topic:        topic,
			Transport:    kt,
			BatchSize:    benchBatch,
			BatchTimeout: time.Millisecond,
			RequiredAcks: kafkago.RequireAll,
		}
		defer w.Close()
		msgs := make([]kafkago.Message, benchBatch)
		batches(b, func(from, to int) error {
			for i := from; i < to; i++ {
				msgs[i-from] = kafkago.Message{Key: []byte("k-" + strconv.Itoa(i%1000)), Value: body}
			}
			return w.WriteMessages(context.Background(), msgs[:to-from]...)
		})
	})

	b.Run("kgo", func(b *testing.B) {
		topic := transporttest.UniqueTopic(b)
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.AllowAutoTopicCreation())
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		tr := open(b, benchConfig(brokers)) // creates the topic with 3 partitions
		if err := tr.Publish(context.Background(), topic, &transport.Message{Body: body}); err != nil {
			b.Fatal(err)
		}
		recs := make([]*kgo.Record, benchBatch)
		batches(b, func(from, to int) error {
			for i := from; i < to; i++ {
				recs[i-from] = &kgo.Record{Key: []byte("k-" + strconv.Itoa(i%1000)), Value: body}
			}
			return cl.ProduceSync(context.Background(), recs[:to-from]...).FirstErr()
		})
	})
}

// fill publishes n messages with 1000 keys to a new 3-partition topic,
// untimed.
func fill(b *testing.B, brokers []string, n int) string {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	tr, err := New(context.Background(), benchConfig(brokers))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	topic := transporttest.UniqueTopic(b)
	body := make([]byte, 100)
	msgs := make([]*transport.Message, 0, 1000)
	for i := 0; i < n; i++ {
		msgs = append(msgs, &transport.Message{Key: "k-" + strconv.Itoa(i%1000), Body: body})
		if len(msgs) == cap(msgs) || i == n-1 {
			if err := tr.Publish(context.Background(), topic, msgs...); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	return topic
}

func consumeBusway(b *testing.B, brokers []string, concurrency int, h func()) {
	topic := fill(b, brokers, b.N)
	tr := open(b, benchConfig(brokers))
	var n atomic.Int64
	done := make(chan struct{})
	b.ReportAllocs()
	b.ResetTimer()
	sub, err := tr.Subscribe(context.Background(), topic, func(context.Context, *transport.Message) error {
		if h != nil {
			h()
		}
		if n.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(b), Concurrency: concurrency, StartFrom: transport.StartEarliest})
	if err != nil {
		b.Fatal(err)
	}
	<-done
	if err := sub.Close(context.Background()); err != nil { // drains and commits
		b.Fatal(err)
	}
	b.StopTimer()
	reportRate(b)
}

func consumeRaw(b *testing.B, brokers []string, h func(), commit func(r *kafkago.Reader, m kafkago.Message) error, interval time.Duration) {
	topic := fill(b, brokers, b.N)
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:           brokers,
		GroupID:           transporttest.UniqueGroup(b),
		Topic:             topic,
		StartOffset:       kafkago.FirstOffset,
		HeartbeatInterval: 100 * time.Millisecond,
		CommitInterval:    interval,
		MaxWait:           100 * time.Millisecond,
	})
	defer r.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m, err := r.FetchMessage(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if h != nil {
			h()
		}
		if err := commit(r, m); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportRate(b)
}

func BenchmarkConsume(b *testing.B) {
	c := newCluster(b)
	brokers := c.ListenAddrs()
	b.Run("busway", func(b *testing.B) { consumeBusway(b, brokers, 1, nil) })
	b.Run("raw-kafka-go-commit-each", func(b *testing.B) {
		consumeRaw(b, brokers, nil, func(r *kafkago.Reader, m kafkago.Message) error {
			return r.CommitMessages(context.Background(), m)
		}, 0)
	})
}

func BenchmarkConsumeSlowHandler(b *testing.B) {
	c := newCluster(b)
	brokers := c.ListenAddrs()
	slow := func() { time.Sleep(time.Millisecond) }
	b.Run("busway", func(b *testing.B) { consumeBusway(b, brokers, 16, slow) })
	b.Run("raw-kafka-go-sequential", func(b *testing.B) {
		// The sequential loop a kafka-go user writes: fetch, handle, commit
		// (asynchronously, every second).
		consumeRaw(b, brokers, slow, func(r *kafkago.Reader, m kafkago.Message) error {
			return r.CommitMessages(context.Background(), m)
		}, time.Second)
	})
}
