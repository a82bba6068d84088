package nats_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
)

// The benchmarks compare busway with raw nats.go on the same embedded
// nats-server (file storage), both over TCP, in the same run. Each
// iteration is one message; every message carries a unique Nats-Msg-Id in
// both cases (busway always sends Message.ID there), so the server does
// the same deduplication work.
//
//	go test -run '^$' -bench . -benchtime 200000x ./transport/nats/

const benchBody = 128

type benchEnv struct {
	srv *server.Server
	tr  *busnats.Transport
	nc  *natsgo.Conn
	js  jetstream.JetStream
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	srv := startServer(b, &server.Options{})
	url := fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))
	e := &benchEnv{srv: srv}
	e.tr = open(b, busnats.Config{Servers: []string{url}, PublishTimeout: time.Minute})
	nc, err := natsgo.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	e.nc = nc
	e.js, _ = jetstream.New(nc)
	b.Cleanup(func() {
		_ = e.tr.Close()
		nc.Close()
		stop(srv)
	})
	return e
}

func report(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func benchMsgs(prefix string, n int) []*transport.Message {
	body := make([]byte, benchBody)
	msgs := make([]*transport.Message, n)
	for i := range msgs {
		msgs[i] = &transport.Message{ID: prefix + strconv.Itoa(i), Body: body}
	}
	return msgs
}

func rawMsgs(subject, prefix string, n int) []*natsgo.Msg {
	body := make([]byte, benchBody)
	msgs := make([]*natsgo.Msg, n)
	for i := range msgs {
		msgs[i] = &natsgo.Msg{Subject: subject, Data: body, Header: natsgo.Header{"Nats-Msg-Id": []string{prefix + strconv.Itoa(i)}}}
	}
	return msgs
}

func BenchmarkPublishBatch(b *testing.B) {
	const batch = 100
	e := newBenchEnv(b)
	ctx := context.Background()
	run := 0
	b.Run("busway", func(b *testing.B) {
		run++
		msgs := benchMsgs(fmt.Sprintf("pb%d-", run), b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			if err := e.tr.Publish(ctx, "bench-batch", msgs[i:min(i+batch, b.N)]...); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("raw-nats", func(b *testing.B) {
		run++
		msgs := rawMsgs(e.tr.Subject("bench-batch-raw"), fmt.Sprintf("pbr%d-", run), b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			for _, m := range msgs[i:min(i+batch, b.N)] {
				if _, err := e.js.PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-e.js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("acks did not arrive")
			}
		}
		report(b)
	})
}

func BenchmarkPublishSingle(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	run := 0
	b.Run("busway", func(b *testing.B) {
		run++
		msgs := benchMsgs(fmt.Sprintf("ps%d-", run), b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for _, m := range msgs {
			if err := e.tr.Publish(ctx, "bench-single", m); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("raw-nats", func(b *testing.B) {
		run++
		msgs := rawMsgs(e.tr.Subject("bench-single-raw"), fmt.Sprintf("psr%d-", run), b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for _, m := range msgs {
			if _, err := e.js.PublishMsg(ctx, m); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
}

// prefill stores n messages on subject with raw async publishes.
func prefill(b *testing.B, e *benchEnv, subject, prefix string, n int) {
	b.Helper()
	msgs := rawMsgs(subject, prefix, n)
	for i, m := range msgs {
		if _, err := e.js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			<-e.js.PublishAsyncComplete()
		}
	}
	<-e.js.PublishAsyncComplete()
}

// BenchmarkConsume: each sub-benchmark gets a fresh server, so that one's
// stream and consumers do not slow the next.
func BenchmarkConsume(b *testing.B) {
	run := 0
	busway := func(concurrency int) func(b *testing.B) {
		return func(b *testing.B) {
			e := newBenchEnv(b)
			run++
			topic := fmt.Sprintf("bench-consume-%d", run)
			prefill(b, e, e.tr.Subject(topic), topic+"-", b.N)
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			b.ReportAllocs()
			b.ResetTimer()
			sub, err := e.tr.Subscribe(context.Background(), topic, func(_ context.Context, m *transport.Message) error {
				if n.Add(1) == target {
					close(done)
				}
				return nil
			}, transport.SubscribeOptions{Group: "bench", Concurrency: concurrency, StartFrom: transport.StartEarliest})
			if err != nil {
				b.Fatal(err)
			}
			<-done
			b.StopTimer()
			report(b)
			if err := sub.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
	// raw reads each message's headers and metadata too when meta is set,
	// as any consumer that wants the message ID, key or delivery count
	// must; busway does that for every message.
	raw := func(meta bool) func(b *testing.B) {
		return func(b *testing.B) {
			e := newBenchEnv(b)
			run++
			subject := e.tr.Subject(fmt.Sprintf("bench-consume-raw-%d", run))
			prefill(b, e, subject, subject+"-", b.N)
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			b.ReportAllocs()
			b.ResetTimer()
			cons, err := e.js.CreateOrUpdateConsumer(context.Background(), busnats.DefaultStream, jetstream.ConsumerConfig{
				Durable: fmt.Sprintf("raw-%d", run), FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
			})
			if err != nil {
				b.Fatal(err)
			}
			var sink atomic.Uint64
			cc, err := cons.Consume(func(m jetstream.Msg) {
				if meta {
					md, err := m.Metadata()
					if err != nil || m.Headers().Get("Nats-Msg-Id") == "" {
						b.Error("no metadata or ID")
					}
					sink.Store(md.NumDelivered)
				}
				if err := m.Ack(); err != nil {
					b.Error(err)
				}
				if n.Add(1) == target {
					close(done)
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			<-done
			b.StopTimer()
			report(b)
			cc.Drain()
			<-cc.Closed()
		}
	}
	b.Run("raw-nats", raw(false))
	b.Run("raw-nats-metadata", raw(true))
	b.Run("busway", busway(1))
	b.Run("busway-concurrency-8", busway(8))
}
