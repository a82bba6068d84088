package benchmarks

import (
	"context"
	"fmt"
	"net"
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

// The NATS cases run on an embedded nats-server (JetStream, file storage
// in a temporary directory), one per case, shut down after it; busway and
// nats.go both connect over TCP. Every message carries a unique
// Nats-Msg-Id in both (busway always sends Message.ID there), so the
// server does the same deduplication work.

const natsBatch = 100

type natsEnv struct {
	tr *busnats.Transport
	js jetstream.JetStream
}

func newNATSEnv(b *testing.B) *natsEnv {
	b.Helper()
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: b.TempDir(), NoSigs: true, NoLog: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		b.Fatal("nats-server not ready")
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := busnats.New(ctx, busnats.Config{Servers: []string{url}, PublishTimeout: time.Minute})
	if err != nil {
		srv.Shutdown()
		b.Fatal(err)
	}
	nc, err := natsgo.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := tr.Close(); err != nil {
			b.Error(err)
		}
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	// The stream exists once busway has published to it.
	if err := tr.Publish(ctx, "warmup", &transport.Message{ID: "warmup", Body: []byte("x")}); err != nil {
		b.Fatal(err)
	}
	return &natsEnv{tr: tr, js: js}
}

func natsRawMsgs(subject, prefix string, n int, body []byte) []*natsgo.Msg {
	msgs := make([]*natsgo.Msg, n)
	for i := range msgs {
		msgs[i] = natsRawMsg(subject, prefix+strconv.Itoa(i), body)
	}
	return msgs
}

// natsRawMsg is the message a nats.go user builds for one event: its ID
// as Nats-Msg-Id, for JetStream's deduplication.
func natsRawMsg(subject, id string, body []byte) *natsgo.Msg {
	return &natsgo.Msg{Subject: subject, Data: body, Header: natsgo.Header{"Nats-Msg-Id": []string{id}}}
}

// natsIDs are n event IDs, made before the clock starts.
func natsIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = prefix + strconv.Itoa(i)
	}
	return ids
}

// BenchmarkNATSPublish: every call returns when JetStream acknowledged
// every message. Each case builds its messages from the same event IDs and
// body inside the clock, as a publisher does per event (a
// transport.Message for busway, a nats.Msg with Nats-Msg-Id for nats.go),
// as the Kafka cases do.
//
//   - busway-single / raw-sync: one message per call (Transport.Publish,
//     jetstream.PublishMsg).
//   - busway-batch / raw-async-batch: 100 per call (Transport.Publish of
//     100; PublishMsgAsync of 100 and PublishAsyncComplete).
func BenchmarkNATSPublish(b *testing.B) {
	forSizes(b, func(b *testing.B, body []byte) {
		ctx := context.Background()
		b.Run("busway-single", func(b *testing.B) {
			e := newNATSEnv(b)
			ids := natsIDs("ps-", b.N)
			startMeasuring(b)
			for _, id := range ids {
				if err := e.tr.Publish(ctx, "bench", &transport.Message{ID: id, Body: body}); err != nil {
					b.Fatal(err)
				}
			}
			report(b)
		})
		b.Run("raw-sync", func(b *testing.B) {
			e := newNATSEnv(b)
			subject := e.tr.Subject("bench")
			ids := natsIDs("ps-", b.N)
			startMeasuring(b)
			for _, id := range ids {
				if _, err := e.js.PublishMsg(ctx, natsRawMsg(subject, id, body)); err != nil {
					b.Fatal(err)
				}
			}
			report(b)
		})
		b.Run("busway-batch", func(b *testing.B) {
			e := newNATSEnv(b)
			ids := natsIDs("pb-", b.N)
			msgs := make([]*transport.Message, natsBatch)
			startMeasuring(b)
			for i := 0; i < b.N; i += natsBatch {
				n := min(natsBatch, b.N-i)
				for j := range n {
					msgs[j] = &transport.Message{ID: ids[i+j], Body: body}
				}
				if err := e.tr.Publish(ctx, "bench", msgs[:n]...); err != nil {
					b.Fatal(err)
				}
			}
			report(b)
		})
		b.Run("raw-async-batch", func(b *testing.B) {
			e := newNATSEnv(b)
			subject := e.tr.Subject("bench")
			ids := natsIDs("pb-", b.N)
			startMeasuring(b)
			for i := 0; i < b.N; i += natsBatch {
				for _, id := range ids[i:min(i+natsBatch, b.N)] {
					if _, err := e.js.PublishMsgAsync(natsRawMsg(subject, id, body)); err != nil {
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
	})
}

// natsFill stores n messages on subject with raw async publishes, untimed.
func natsFill(b *testing.B, e *natsEnv, subject string, n int, body []byte) {
	b.Helper()
	for i, m := range natsRawMsgs(subject, "f-", n, body) {
		if _, err := e.js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			<-e.js.PublishAsyncComplete()
		}
	}
	<-e.js.PublishAsyncComplete()
}

// BenchmarkNATSConsume: a durable consumer reads b.N stored messages from
// the start and acks each (explicit acks).
//
//   - busway: Transport.Subscribe, Concurrency 1 (it reads each message's
//     metadata and headers, as any consumer that wants the ID, key or
//     delivery count must).
//   - raw-consume-ack: jetstream Consumer.Consume with a callback that
//     calls Ack.
func BenchmarkNATSConsume(b *testing.B) {
	forSizes(b, func(b *testing.B, body []byte) {
		b.Run("busway", func(b *testing.B) {
			e := newNATSEnv(b)
			natsFill(b, e, e.tr.Subject("bench"), b.N, body)
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			startMeasuring(b)
			sub, err := e.tr.Subscribe(context.Background(), "bench", func(_ context.Context, m *transport.Message) error {
				if n.Add(1) == target {
					close(done)
				}
				return nil
			}, transport.SubscribeOptions{Group: "bench", StartFrom: transport.StartEarliest})
			if err != nil {
				b.Fatal(err)
			}
			waitDone(b, done, 5*time.Minute, func() string { return strconv.FormatInt(n.Load(), 10) + " handled" })
			report(b)
			if err := sub.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
		b.Run("raw-consume-ack", func(b *testing.B) {
			e := newNATSEnv(b)
			subject := e.tr.Subject("bench")
			natsFill(b, e, subject, b.N, body)
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			startMeasuring(b)
			cons, err := e.js.CreateOrUpdateConsumer(context.Background(), busnats.DefaultStream, jetstream.ConsumerConfig{
				Durable: "raw", FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
			})
			if err != nil {
				b.Fatal(err)
			}
			cc, err := cons.Consume(func(m jetstream.Msg) {
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
			waitDone(b, done, 5*time.Minute, func() string { return strconv.FormatInt(n.Load(), 10) + " handled" })
			report(b)
			cc.Drain()
			<-cc.Closed()
		})
	})
}
