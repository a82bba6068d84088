package benchmarks

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
	busnats "github.com/busway/busway/transport/nats"
)

// BenchmarkLatency: publish-to-handler latency at a fixed offered rate,
// busway against the raw client on the same kind of broker (each variant on
// its own server or cluster). One publisher sends 256-byte messages, one at
// a time, paced to the offered rate; each carries its sequence number and
// the time just before its publish call, and the handler records now minus
// that. The offered rate is a third of the slower variant's unpaced publish
// rate, measured first in the same run on fresh instances (or
// BUSWAY_BENCH_RATE_<CHANBUS|NATS|KAFKA> msgs/s when set), and is the same
// for both variants. Reported: p50-µs, p99-µs, p99.9-µs, offered-msgs/s.
//
//   - chanbus: busway chanbus Publish -> handler; raw-chan: a buffered
//     channel and a goroutine.
//   - nats: busway Transport.Publish -> Subscribe handler; raw-nats:
//     jetstream PublishMsg -> Consume callback with Ack.
//   - kafka (kfake): busway Transport.Publish -> Subscribe handler;
//     raw-kgo: franz-go ProduceSync -> group consumer PollFetches.
func BenchmarkLatency(b *testing.B) {
	latencyGroup(b, "chanbus", map[string]pipeOpener{"busway": chanbusPipe, "raw-chan": rawChanPipe})
	latencyGroup(b, "nats", map[string]pipeOpener{"busway": natsPipe, "raw-nats": rawNATSPipe})
	latencyGroup(b, "kafka", map[string]pipeOpener{"busway": kafkaPipe, "raw-kgo": rawKgoPipe})
}

// A pipe carries bodies from publish to recv; close stops it.
type pipe struct {
	publish func(body []byte) error
	close   func()
}

type pipeOpener func(b *testing.B, recv func(body []byte)) pipe

const warmupSeq = math.MaxUint64

func latencyGroup(b *testing.B, name string, variants map[string]pipeOpener) {
	b.Run(name, func(b *testing.B) {
		order := slices.Sorted(func(yield func(string) bool) {
			for k := range variants {
				if !yield(k) {
					return
				}
			}
		})
		rate, err := strconv.ParseFloat(os.Getenv("BUSWAY_BENCH_RATE_"+upper(name)), 64)
		if err != nil || rate <= 0 {
			rate = math.Inf(1)
			for _, v := range order {
				rate = min(rate, calibrate(b, variants[v]))
			}
			rate /= 3
		}
		for _, v := range order {
			b.Run(v, func(b *testing.B) { measureLatency(b, variants[v], rate) })
		}
	})
}

func upper(s string) string {
	p := []byte(s)
	for i, c := range p {
		if 'a' <= c && c <= 'z' {
			p[i] = c - 'a' + 'A'
		}
	}
	return string(p)
}

// calibrate is the unpaced publish rate of one fresh pipe over about 300 ms.
func calibrate(b *testing.B, open pipeOpener) float64 {
	var got atomic.Int64
	p := open(b, func([]byte) { got.Add(1) })
	defer p.close()
	warmup(b, p, func() bool { return got.Load() > 0 })
	body := payload(256)
	binary.BigEndian.PutUint64(body, warmupSeq)
	start := time.Now()
	n := 0
	for time.Since(start) < 300*time.Millisecond {
		if err := p.publish(body); err != nil {
			b.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// warmup publishes warm-up messages until seen reports one delivered: the
// subscription is joined and connections are up.
func warmup(b *testing.B, p pipe, seen func() bool) {
	b.Helper()
	body := payload(256)
	binary.BigEndian.PutUint64(body, warmupSeq)
	deadline := time.Now().Add(time.Minute)
	for !seen() {
		if time.Now().After(deadline) {
			b.Fatal("no warm-up message arrived within a minute")
		}
		if err := p.publish(body); err != nil {
			b.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func measureLatency(b *testing.B, open pipeOpener, rate float64) {
	lat := make([]int64, b.N)
	var got, warm atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	p := open(b, func(body []byte) {
		now := time.Now().UnixNano()
		seq := binary.BigEndian.Uint64(body)
		if seq == warmupSeq {
			warm.Add(1)
			return
		}
		if seq < uint64(len(lat)) && lat[seq] == 0 {
			lat[seq] = max(1, now-int64(binary.BigEndian.Uint64(body[8:])))
			if got.Add(1) == int64(len(lat)) {
				once.Do(func() { close(done) })
			}
		}
	})
	defer p.close()
	warmup(b, p, func() bool { return warm.Load() > 0 })
	body := payload(256)
	interval := float64(time.Second) / rate
	startMeasuring(b)
	start := time.Now()
	for i := range b.N {
		due := start.Add(time.Duration(float64(i) * interval))
		for d := time.Until(due); d > 0; d = time.Until(due) {
			if d > 300*time.Microsecond {
				time.Sleep(d - 200*time.Microsecond)
			} else {
				runtime.Gosched()
			}
		}
		binary.BigEndian.PutUint64(body, uint64(i))
		binary.BigEndian.PutUint64(body[8:], uint64(time.Now().UnixNano()))
		if err := p.publish(body); err != nil {
			b.Fatal(err)
		}
	}
	waitDone(b, done, time.Minute, func() string { return strconv.FormatInt(got.Load(), 10) + " of " + strconv.Itoa(b.N) + " delivered" })
	report(b)
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / 1e3 }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(0.999), "p99.9-µs")
	b.ReportMetric(rate, "offered-msgs/s")
}

func chanbusPipe(b *testing.B, recv func([]byte)) pipe {
	tr := chanbus.New()
	ctx := context.Background()
	sub, err := tr.Subscribe(ctx, "latency", func(_ context.Context, m *transport.Message) error {
		recv(m.Body)
		return nil
	}, transport.SubscribeOptions{Group: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	m := &transport.Message{ID: "m", Key: "k"}
	return pipe{
		publish: func(body []byte) error { m.Body = body; return tr.Publish(ctx, "latency", m) },
		close:   func() { _ = sub.Close(ctx); _ = tr.Close() },
	}
}

func rawChanPipe(b *testing.B, recv func([]byte)) pipe {
	ch := make(chan []byte, chanbus.DefaultBuffer)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for body := range ch {
			recv(body)
		}
	}()
	return pipe{
		// The raw channel carries a copy: the publisher reuses its buffer.
		publish: func(body []byte) error { ch <- append([]byte(nil), body...); return nil },
		close:   func() { close(ch); <-done },
	}
}

func natsPipe(b *testing.B, recv func([]byte)) pipe {
	e := newNATSEnv(b)
	ctx := context.Background()
	sub, err := e.tr.Subscribe(ctx, "latency", func(_ context.Context, m *transport.Message) error {
		recv(m.Body)
		return nil
	}, transport.SubscribeOptions{Group: "bench", StartFrom: transport.StartEarliest})
	if err != nil {
		b.Fatal(err)
	}
	seq := 0
	return pipe{
		publish: func(body []byte) error {
			seq++
			return e.tr.Publish(ctx, "latency", &transport.Message{ID: "l-" + strconv.Itoa(seq), Body: body})
		},
		close: func() { _ = sub.Close(ctx) },
	}
}

func rawNATSPipe(b *testing.B, recv func([]byte)) pipe {
	e := newNATSEnv(b)
	ctx := context.Background()
	subject := e.tr.Subject("latency")
	cons, err := e.js.CreateOrUpdateConsumer(ctx, busnats.DefaultStream, jetstream.ConsumerConfig{
		Durable: "raw", FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		b.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		recv(m.Data())
		_ = m.Ack()
	})
	if err != nil {
		b.Fatal(err)
	}
	seq := 0
	return pipe{
		publish: func(body []byte) error {
			seq++
			_, err := e.js.Publish(ctx, subject, body, jetstream.WithMsgID("l-"+strconv.Itoa(seq)))
			return err
		},
		close: func() { cc.Drain(); <-cc.Closed() },
	}
}

func kafkaPipe(b *testing.B, recv func([]byte)) pipe {
	brokers := kafkaCluster(b)
	tr := kafkaOpen(b, brokers)
	ctx := context.Background()
	topic := uniq("latency")
	sub, err := tr.Subscribe(ctx, topic, func(_ context.Context, m *transport.Message) error {
		recv(m.Body)
		return nil
	}, transport.SubscribeOptions{Group: uniq("g"), StartFrom: transport.StartEarliest})
	if err != nil {
		b.Fatal(err)
	}
	return pipe{
		publish: func(body []byte) error { return tr.Publish(ctx, topic, &transport.Message{Body: body}) },
		close:   func() { _ = sub.Close(ctx) },
	}
}

func rawKgoPipe(b *testing.B, recv func([]byte)) pipe {
	brokers := kafkaCluster(b)
	topic := uniq("latency")
	kafkaCreateTopic(b, brokers, topic)
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		b.Fatal(err)
	}
	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(uniq("g")), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.HeartbeatInterval(100*time.Millisecond),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			fs := cons.PollFetches(ctx)
			if ctx.Err() != nil || fs.IsClientClosed() {
				return
			}
			fs.EachError(func(_ string, _ int32, err error) {
				if !errors.Is(err, context.Canceled) {
					b.Error(err)
				}
			})
			fs.EachRecord(func(r *kgo.Record) { recv(r.Value) })
		}
	}()
	return pipe{
		publish: func(body []byte) error {
			return prod.ProduceSync(context.Background(), &kgo.Record{Value: body}).FirstErr()
		},
		close: func() { cancel(); <-done; cons.Close(); prod.Close() },
	}
}
