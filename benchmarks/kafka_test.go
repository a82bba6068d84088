package benchmarks

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busway/busway/transport"
	buskafka "github.com/busway/busway/transport/kafka"
)

// The Kafka cases run on franz-go's kfake, an in-process Kafka-protocol
// cluster of 3 brokers; each case gets its own cluster, closed after it,
// and topics of 3 partitions. Records are keyed with 1000 keys.

const kafkaBatch = 100

func kafkaCluster(b *testing.B, opts ...kfake.Opt) []string {
	b.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(3), kfake.DefaultNumPartitions(3),
		kfake.GroupMinSessionTimeout(500 * time.Millisecond)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c.ListenAddrs()
}

func kafkaConfig(brokers []string) buskafka.Config {
	return buskafka.Config{
		Brokers:           brokers,
		Topics:            buskafka.Provisioning{Partitions: 3},
		SessionTimeout:    3 * time.Second,
		HeartbeatInterval: 100 * time.Millisecond,
		RebalanceTimeout:  5 * time.Second,
		DrainTimeout:      3 * time.Second,
		FetchMaxWait:      100 * time.Millisecond,
	}
}

func kafkaOpen(b *testing.B, brokers []string) *buskafka.Transport {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := buskafka.New(ctx, kafkaConfig(brokers))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := tr.Close(); err != nil {
			b.Error(err)
		}
	})
	return tr
}

func kafkaCreateTopic(b *testing.B, brokers []string, topic string) {
	b.Helper()
	kt := &kafkago.Transport{}
	defer kt.CloseIdleConnections()
	res, err := (&kafkago.Client{Addr: kafkago.TCP(brokers...), Transport: kt}).CreateTopics(context.Background(),
		&kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{{Topic: topic, NumPartitions: 3, ReplicationFactor: -1}}})
	if err != nil {
		b.Fatal(err)
	}
	for _, err := range res.Errors {
		if err != nil {
			b.Fatal(err)
		}
	}
}

// kafkaBatches sends b.N messages in batches of kafkaBatch, timed.
func kafkaBatches(b *testing.B, send func(from, to int) error) {
	startMeasuring(b)
	for i := 0; i < b.N; i += kafkaBatch {
		if err := send(i, min(b.N, i+kafkaBatch)); err != nil {
			b.Fatal(err)
		}
	}
	report(b)
}

// BenchmarkKafkaPublish: synchronous batches of 100 (each call returns when
// every record is acknowledged by all in-sync replicas). The clusters are
// kfake's BlackholeProduce ones (records acknowledged, offsets advanced, the
// bytes not kept): a storing kfake keeps each partition's log in one slice
// that it grows by doubling, and at 4 KiB those copies and the fresh memory
// behind them were half of the process's CPU and fell mostly on whichever
// case ran first in the process (busway-batch), 1.3-1.7x its time, so the
// ratio measured the case order more than the clients.
//
//   - busway-batch: Transport.Publish of 100 messages.
//   - raw-kafka-go-writer: kafka-go Writer.WriteMessages, BatchSize 100,
//     BatchTimeout 1 ms, RequireAll.
//   - kgo-produce-sync: franz-go Client.ProduceSync of 100 records,
//     uncompressed like busway's default (kgo's own default is snappy), no
//     linger.
func BenchmarkKafkaPublish(b *testing.B) {
	forSizes(b, func(b *testing.B, body []byte) {
		b.Run("busway-batch", func(b *testing.B) {
			brokers := kafkaCluster(b, kfake.BlackholeProduce())
			tr := kafkaOpen(b, brokers)
			topic := uniq("pub")
			msgs := make([]*transport.Message, kafkaBatch)
			kafkaBatches(b, func(from, to int) error {
				for i := from; i < to; i++ {
					msgs[i-from] = &transport.Message{Key: keys[i%len(keys)], Body: body}
				}
				return tr.Publish(context.Background(), topic, msgs[:to-from]...)
			})
		})
		b.Run("raw-kafka-go-writer", func(b *testing.B) {
			brokers := kafkaCluster(b, kfake.BlackholeProduce())
			topic := uniq("pub")
			kafkaCreateTopic(b, brokers, topic)
			kt := &kafkago.Transport{}
			defer kt.CloseIdleConnections()
			w := &kafkago.Writer{
				Addr:         kafkago.TCP(brokers...),
				Topic:        topic,
				Transport:    kt,
				BatchSize:    kafkaBatch,
				BatchTimeout: time.Millisecond,
				RequiredAcks: kafkago.RequireAll,
			}
			defer w.Close()
			msgs := make([]kafkago.Message, kafkaBatch)
			kafkaBatches(b, func(from, to int) error {
				for i := from; i < to; i++ {
					msgs[i-from] = kafkago.Message{Key: []byte(keys[i%len(keys)]), Value: body}
				}
				return w.WriteMessages(context.Background(), msgs[:to-from]...)
			})
		})
		b.Run("kgo-produce-sync", func(b *testing.B) {
			brokers := kafkaCluster(b, kfake.BlackholeProduce())
			topic := uniq("pub")
			kafkaCreateTopic(b, brokers, topic)
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0),
				kgo.ProducerBatchCompression(kgo.NoCompression()))
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			recs := make([]*kgo.Record, kafkaBatch)
			kafkaBatches(b, func(from, to int) error {
				for i := from; i < to; i++ {
					recs[i-from] = &kgo.Record{Key: []byte(keys[i%len(keys)]), Value: body}
				}
				return cl.ProduceSync(context.Background(), recs[:to-from]...).FirstErr()
			})
		})
	})
}

// kafkaFill publishes n keyed messages to a new topic, untimed.
func kafkaFill(b *testing.B, brokers []string, n int, body []byte) string {
	b.Helper()
	tr, err := buskafka.New(context.Background(), kafkaConfig(brokers))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	topic := uniq("consume")
	msgs := make([]*transport.Message, 0, 500)
	for i := range n {
		msgs = append(msgs, &transport.Message{Key: keys[i%len(keys)], Body: body})
		if len(msgs) == cap(msgs) || i == n-1 {
			if err := tr.Publish(context.Background(), topic, msgs...); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	return topic
}

// kafkaConsumeBusway consumes b.N prefilled messages with a busway
// subscription and closes it (which drains and commits) inside the clock.
func kafkaConsumeBusway(b *testing.B, body []byte, concurrency int, h func()) {
	brokers := kafkaCluster(b)
	topic := kafkaFill(b, brokers, b.N, body)
	tr := kafkaOpen(b, brokers)
	var n atomic.Int64
	done := make(chan struct{})
	startMeasuring(b)
	sub, err := tr.Subscribe(context.Background(), topic, func(context.Context, *transport.Message) error {
		if h != nil {
			h()
		}
		if n.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	}, transport.SubscribeOptions{Group: uniq("g"), Concurrency: concurrency, StartFrom: transport.StartEarliest})
	if err != nil {
		b.Fatal(err)
	}
	waitDone(b, done, 5*time.Minute, func() string { return strconv.FormatInt(n.Load(), 10) + " handled" })
	if err := sub.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
	report(b)
}

// kafkaConsumeReader is the loop a kafka-go user writes: FetchMessage,
// handle, CommitMessages (synchronous when interval is 0).
func kafkaConsumeReader(b *testing.B, body []byte, h func(), interval time.Duration) {
	brokers := kafkaCluster(b)
	topic := kafkaFill(b, brokers, b.N, body)
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:           brokers,
		GroupID:           uniq("g"),
		Topic:             topic,
		StartOffset:       kafkago.FirstOffset,
		HeartbeatInterval: 100 * time.Millisecond,
		CommitInterval:    interval,
		MaxWait:           100 * time.Millisecond,
	})
	defer r.Close()
	startMeasuring(b)
	for range b.N {
		m, err := r.FetchMessage(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if h != nil {
			h()
		}
		if err := r.CommitMessages(context.Background(), m); err != nil {
			b.Fatal(err)
		}
	}
	report(b)
}

// BenchmarkKafkaConsume: a consumer group reads b.N prefilled messages from
// the start and commits them; the clock includes joining the group.
//
//   - busway-c1, busway-c16: Transport.Subscribe at Concurrency 1 and 16
//     (per-partition workers, key-sharded, contiguous-offset commits every
//     second and at Close, which is timed).
//   - raw-kafka-go-commit-each: kafka-go Reader, CommitMessages after each
//     message (synchronous commits: the at-least-once loop).
//   - kgo-group: franz-go consumer group, PollFetches, autocommit, and a
//     final CommitUncommittedOffsets (timed).
func BenchmarkKafkaConsume(b *testing.B) {
	forSizes(b, func(b *testing.B, body []byte) {
		b.Run("busway-c1", func(b *testing.B) { kafkaConsumeBusway(b, body, 1, nil) })
		b.Run("busway-c16", func(b *testing.B) { kafkaConsumeBusway(b, body, 16, nil) })
		b.Run("raw-kafka-go-commit-each", func(b *testing.B) { kafkaConsumeReader(b, body, nil, 0) })
		b.Run("kgo-group", func(b *testing.B) {
			brokers := kafkaCluster(b)
			topic := kafkaFill(b, brokers, b.N, body)
			startMeasuring(b)
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(uniq("g")), kgo.ConsumeTopics(topic),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.HeartbeatInterval(100*time.Millisecond))
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			var n int
			for n < b.N {
				fs := cl.PollFetches(ctx)
				if err := fs.Err(); err != nil {
					b.Fatal(err)
				}
				fs.EachRecord(func(r *kgo.Record) {
					if len(r.Value) == len(body) {
						n++
					}
				})
			}
			if err := cl.CommitUncommittedOffsets(ctx); err != nil {
				b.Fatal(err)
			}
			report(b)
		})
	})
}

// BenchmarkKafkaSlowHandler: a 1 ms handler (a database call, say) on a
// 3-partition topic: busway at Concurrency 16 against the sequential
// kafka-go loop (fetch, handle, commit every second). 16x is the limit.
func BenchmarkKafkaSlowHandler(b *testing.B) {
	body := payload(256)
	slow := func() { time.Sleep(time.Millisecond) }
	b.Run("busway-c16", func(b *testing.B) { kafkaConsumeBusway(b, body, 16, slow) })
	b.Run("raw-kafka-go-sequential", func(b *testing.B) { kafkaConsumeReader(b, body, slow, time.Second) })
}
