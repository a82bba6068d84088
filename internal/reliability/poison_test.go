package reliability

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
	"github.com/busway/busway/transport/kafka"
	"github.com/busway/busway/transport/nats"
)

// poisonActions are the failing handlers TestPoison runs: a handler that
// panics, one that calls runtime.Goexit (middleware.Recover fails its
// redelivery permanently) and one that hangs past its Timeout.
var poisonActions = []string{"panic", "goexit", "hang"}

type Order struct {
	ID     string `json:"id"`
	Action string `json:"action"` // ok, panic, goexit, hang
}

func poisonTransports() map[string]func(t *testing.T) transport.Transport {
	return map[string]func(t *testing.T) transport.Transport{
		"chanbus": func(*testing.T) transport.Transport { return chanbus.New() },
		"nats-embedded": func(t *testing.T) transport.Transport {
			tr, err := nats.New(context.Background(), nats.Config{Embedded: &nats.EmbeddedConfig{StoreDir: t.TempDir(), NoListen: true},
				NakDelays: []time.Duration{20 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		},
		"kafka-kfake": func(t *testing.T) transport.Transport {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1), kfake.GroupMinSessionTimeout(500*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			tr, err := kafka.New(context.Background(), kafka.Config{Brokers: c.ListenAddrs(), Topics: kafka.Provisioning{Partitions: 1},
				SessionTimeout: 3 * time.Second, HeartbeatInterval: 100 * time.Millisecond, RebalanceTimeout: 5 * time.Second,
				DrainTimeout: 3 * time.Second, FetchMaxWait: 50 * time.Millisecond, CommitInterval: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		},
	}
}

// TestPoison sends every kind of bad input, all with one key, through the
// recommended chain on every transport: bodies that do not decode,
// missing and malformed CloudEvents headers, an unknown event type, a
// message over the broker's size limit, a header name brokers refuse, and
// handlers that panic, hang past their Timeout or call runtime.Goexit. No
// crash; each ends in the dead-letter topic with its reason, or in a
// documented skip counted by Metrics (unknown type), or is refused at
// Publish with a classified error (too large, refused name); and the key is
// not stuck: an event published after all of them is handled.
func TestPoison(t *testing.T) {
	for name, open := range poisonTransports() {
		t.Run(name, func(t *testing.T) {
			tr := open(t)
			defer tr.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer mp.Shutdown(context.Background())
			b := bus.New(tr, bus.WithSource("poison"),
				bus.WithMiddleware(middleware.Metrics(middleware.MetricsOptions{MeterProvider: mp}),
					middleware.DeadLetter(tr, middleware.DeadLetterOptions{}),
					middleware.Retry(middleware.RetryOptions{MaxAttempts: 2, InitialInterval: time.Millisecond}),
					middleware.Timeout(300*time.Millisecond), middleware.Recover()))
			topic := fmt.Sprintf("poison-%d", time.Now().UnixNano())
			if err := bus.Register[Order](b, topic); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			handled := map[string]bool{}
			if _, err := bus.Subscribe(b, "shop", func(ctx context.Context, e bus.Event[Order]) error {
				switch e.Data.Action {
				case "panic":
					panic("poison order " + e.Data.ID)
				case "goexit":
					runtime.Goexit()
				case "hang":
					<-ctx.Done()
					return ctx.Err()
				}
				mu.Lock()
				handled[e.Data.ID] = true
				mu.Unlock()
				return nil
			}, bus.WithStartFrom(transport.StartEarliest)); err != nil {
				t.Fatal(err)
			}
			dead := map[string]string{} // original ID -> reason
			dsub, err := tr.Subscribe(ctx, middleware.DLQTopic(topic), func(_ context.Context, m *transport.Message) error {
				mu.Lock()
				dead[m.Header[middleware.HeaderDLQID]] = m.Header[middleware.HeaderDLQError]
				mu.Unlock()
				return nil
			}, transport.SubscribeOptions{Group: "inspect", StartFrom: transport.StartEarliest})
			if err != nil {
				t.Fatal(err)
			}
			defer dsub.Close(context.Background())
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}

			// A valid envelope of type Order with what differs.
			raw := func(id string, body string, h map[string]string) *transport.Message {
				m := &transport.Message{ID: id, Key: "k", Body: []byte(body), Header: map[string]string{
					transport.HeaderID: id, transport.HeaderType: "Order", transport.HeaderSource: "test",
					transport.HeaderSpecVersion: "1.0", transport.HeaderContentType: "application/json"}}
				for k, v := range h {
					if v == "" {
						delete(m.Header, k)
					} else {
						m.Header[k] = v
					}
				}
				return m
			}
			toDLQ := map[string]*transport.Message{
				"undecodable body":   raw("p-body", `{"id": 7`, nil),
				"wrong body type":    raw("p-type", `{"id": 7}`, nil),
				"malformed ce_time":  raw("p-time", `{"id":"p-time"}`, map[string]string{transport.HeaderTime: "yesterday"}),
				"bad ce_specversion": raw("p-spec", `{"id":"p-spec"}`, map[string]string{transport.HeaderSpecVersion: "0.1"}),
			}
			for what, m := range toDLQ {
				if err := tr.Publish(ctx, topic, m); err != nil {
					t.Fatalf("%s: Publish: %v", what, err)
				}
			}
			// Without a type on a topic of one event type: decoded with
			// what is known, and handled (documented).
			for _, m := range []*transport.Message{raw("p-notype", `{"id":"p-notype"}`, map[string]string{transport.HeaderType: ""}),
				{ID: "p-none", Key: "k", Body: []byte(`{"id":"p-none"}`)}} {
				if err := tr.Publish(ctx, topic, m); err != nil {
					t.Fatal(err)
				}
			}
			if err := tr.Publish(ctx, topic, raw("p-unknown", `{}`, map[string]string{transport.HeaderType: "NoSuchEvent"})); err != nil {
				t.Fatal(err)
			}
			for _, a := range poisonActions {
				if err := bus.Publish(ctx, b, Order{ID: "p-" + a, Action: a}, bus.WithKey("k"), bus.WithID("p-"+a)); err != nil {
					t.Fatal(err)
				}
				toDLQ["handler "+a] = &transport.Message{ID: "p-" + a}
			}
			// Refused at Publish, classified.
			err = tr.Publish(ctx, topic, raw("p-name", `{"id":"p-name"}`, map[string]string{"bad name:": "x"}))
			// A name nats.go refuses ("bad name:"): refused at Publish where the
			// broker client refuses it, else delivered like any other.
			nameAccepted := err == nil
			if err != nil && !errors.Is(err, transport.ErrInvalidMessage) {
				t.Errorf("refused header name: Publish = %v, want ErrInvalidMessage", err)
			}
			if _, isNATS := tr.(*nats.Transport); isNATS && nameAccepted {
				t.Errorf("NATS accepted a header name nats.go refuses")
			}
			if l, ok := tr.(interface{ MaxMessageBytes() int }); ok {
				err = tr.Publish(ctx, topic, raw("p-big", strings.Repeat("x", l.MaxMessageBytes()+1), nil))
				if !errors.Is(err, transport.ErrMessageTooLarge) {
					t.Errorf("oversized message: Publish = %v, want ErrMessageTooLarge", err)
				}
			}
			// The key is not stuck.
			if err := bus.Publish(ctx, b, Order{ID: "after", Action: "ok"}, bus.WithKey("k")); err != nil {
				t.Fatal(err)
			}
			for {
				mu.Lock()
				done := handled["after"] && handled["p-notype"] && handled["p-none"] && (!nameAccepted || handled["p-name"]) && len(dead) >= len(toDLQ)
				mu.Unlock()
				if done {
					break
				}
				if ctx.Err() != nil {
					mu.Lock()
					t.Fatalf("after 40 s: follow-up handled %v, dead letters %v", handled["after"], dead)
				}
				time.Sleep(10 * time.Millisecond)
			}
			mu.Lock()
			for what, m := range toDLQ {
				reason, ok := dead[m.ID]
				if !ok || reason == "" {
					t.Errorf("%s: no dead letter with a reason (%v)", what, dead)
					continue
				}
				t.Logf("%s: dead-lettered: %s", what, reason)
			}
			if _, ok := dead["p-unknown"]; ok {
				t.Errorf("the unknown event type was dead-lettered, want skipped")
			}
			mu.Unlock()
			if err := b.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(context.Background(), &rm); err != nil {
				t.Fatal(err)
			}
			metrics := fmt.Sprintf("%+v", rm)
			for _, want := range []string{transport.OutcomeUnknownType, "dead_letter"} {
				if !strings.Contains(metrics, want) {
					t.Errorf("no %q outcome in the metrics", want)
				}
			}
		})
	}
}
