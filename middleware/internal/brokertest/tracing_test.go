package brokertest_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/kafka"
	"github.com/busway/busway/transport/nats"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// brokers returns the broker transports to test: embedded ones always, the
// machine's servers when BUS_TEST_NATS_URL / BUS_TEST_KAFKA_BROKERS are set.
func brokers(t *testing.T) map[string]func(t *testing.T) (transport.Transport, string) {
	cases := map[string]func(t *testing.T) (transport.Transport, string){
		"nats-embedded": func(t *testing.T) (transport.Transport, string) {
			return openNATS(t, nats.Config{Embedded: &nats.EmbeddedConfig{StoreDir: t.TempDir(), NoListen: true}}), "nats"
		},
		"kafka-kfake": func(t *testing.T) (transport.Transport, string) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3),
				kfake.GroupMinSessionTimeout(500*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return openKafka(t, c.ListenAddrs()), "kafka"
		},
	}
	if u := os.Getenv("BUS_TEST_NATS_URL"); u != "" {
		cases["nats-server"] = func(t *testing.T) (transport.Transport, string) {
			// A stream of its own, deleted afterwards, so runs do not see
			// each other's messages.
			id := uniq()
			tr := openNATS(t, nats.Config{Servers: []string{u}, Stream: "MWTRACE_" + id,
				SubjectPrefix: "mwtrace" + id, Storage: nats.StorageMemory})
			t.Cleanup(func() { _ = tr.JetStream().DeleteStream(context.Background(), tr.Stream()) })
			return tr, "nats"
		}
	}
	if b := os.Getenv("BUS_TEST_KAFKA_BROKERS"); b != "" {
		cases["kafka-brokers"] = func(t *testing.T) (transport.Transport, string) {
			return openKafka(t, strings.Split(b, ",")), "kafka"
		}
	}
	return cases
}

func uniq() string { return strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "") }

func openNATS(t *testing.T, cfg nats.Config) *nats.Transport {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := nats.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func openKafka(t *testing.T, addrs []string) transport.Transport {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := kafka.New(ctx, kafka.Config{
		Brokers:           addrs,
		CommitInterval:    100 * time.Millisecond,
		SessionTimeout:    3 * time.Second,
		HeartbeatInterval: 100 * time.Millisecond,
		RebalanceTimeout:  5 * time.Second,
		DrainTimeout:      3 * time.Second,
		FetchMaxWait:      100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// TestTracingOnBrokers: a message published through PublishTracing and
// consumed through Tracing gives a send span and a process span in one
// trace, the process span a child of the send span, with the semantic
// convention attributes (and, on Kafka, partition and offset).
func TestTracingOnBrokers(t *testing.T) {
	for name, open := range brokers(t) {
		t.Run(name, func(t *testing.T) {
			tr, system := open(t)
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer tp.Shutdown(context.Background())
			opts := middleware.TracingOptions{TracerProvider: tp, Propagator: propagation.TraceContext{}, System: system}

			topic := "mw-trace-" + uniq()
			handled := make(chan struct{}, 1)
			h := middleware.Tracing(opts)(func(context.Context, *transport.Message) error {
				select {
				case handled <- struct{}{}:
				default:
				}
				return nil
			})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			sub, err := tr.Subscribe(ctx, topic, h, transport.SubscribeOptions{Group: "billing", StartFrom: transport.StartEarliest})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close(context.Background())
			pub := middleware.PublishTracing(opts)(tr)
			if err := pub.Publish(ctx, topic, &transport.Message{ID: "o-1", Key: "42", Body: []byte("hello")}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-handled:
			case <-ctx.Done():
				t.Fatal("message not handled within 60s")
			}
			var send, process sdktrace.ReadOnlySpan
			deadline := time.Now().Add(10 * time.Second)
			for send == nil || process == nil {
				if time.Now().After(deadline) {
					t.Fatalf("spans: %v", rec.Ended())
				}
				for _, s := range rec.Ended() {
					switch s.Name() {
					case "send " + topic:
						send = s
					case "process " + topic:
						process = s
					}
				}
				time.Sleep(time.Millisecond)
			}
			if send.SpanContext().TraceID() != process.SpanContext().TraceID() ||
				process.Parent().SpanID() != send.SpanContext().SpanID() {
				t.Fatalf("process span (trace %v, parent %v) is not a child of the send span (trace %v, span %v)",
					process.SpanContext().TraceID(), process.Parent().SpanID(), send.SpanContext().TraceID(), send.SpanContext().SpanID())
			}
			if send.SpanKind() != trace.SpanKindProducer || process.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("kinds %v %v", send.SpanKind(), process.SpanKind())
			}
			// The process span links to the message's creation context,
			// and the transport names the messaging.system the middleware
			// report by default.
			if l := process.Links(); len(l) != 1 || l[0].SpanContext.SpanID() != send.SpanContext().SpanID() {
				t.Errorf("process span links %v, want one to the send span %v", l, send.SpanContext().SpanID())
			}
			if got := transport.SystemOf(tr); got != system {
				t.Errorf("SystemOf(%T) = %q, want %q", tr, got, system)
			}
			want := map[attribute.Key]string{
				"messaging.system": system, "messaging.destination.name": topic,
				"messaging.message.id": "o-1", "messaging.consumer.group.name": "billing",
				"messaging.operation.type": "process",
			}
			if system == "kafka" {
				want["messaging.destination.partition.id"] = "*"
				want["messaging.kafka.offset"] = "*"
			}
			got := map[attribute.Key]string{}
			for _, kv := range process.Attributes() {
				got[kv.Key] = kv.Value.String()
			}
			for k, v := range want {
				if g, ok := got[k]; !ok || (v != "*" && g != v) {
					t.Errorf("process span %s = %q, want %q (all: %v)", k, g, v, got)
				}
			}
		})
	}
}
