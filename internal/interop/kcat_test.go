package interop

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport/kafka"
	"github.com/busway/busway/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// OrderCreated names itself with a reverse-DNS CloudEvents type, as a
// foreign producer would.
type OrderCreated struct {
	OrderID string  `json:"orderId"`
	Total   float64 `json:"total"`
}

func (OrderCreated) EventType() string { return "com.example.order.created" }

// OrderShipped is what busway publishes for kcat to read.
type OrderShipped struct {
	OrderID string `json:"orderId"`
	Parcel  string `json:"parcel"`
}

func (OrderShipped) EventType() string { return "com.example.order.shipped" }

// kcatPath returns kcat, skipping when it is absent unless
// BUS_TEST_REQUIRE_KCAT=1 (CI), where that fails.
func kcatPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("kcat")
	if err != nil {
		if os.Getenv("BUS_TEST_REQUIRE_KCAT") == "1" {
			t.Fatalf("kcat is required (BUS_TEST_REQUIRE_KCAT=1) but not on PATH: %v (apt-get install kcat)", err)
		}
		t.Skip("kcat (a foreign Kafka client) is not installed: skipping (apt-get install kcat; BUS_TEST_REQUIRE_KCAT=1 makes this a failure)")
	}
	return p
}

func kcat(t *testing.T, bin string, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// TestKcatTypedInterop: a record kcat produces with CloudEvents binary-mode
// headers and a key is decoded by a typed bus subscriber; an event that
// bus.Publish sends is read by kcat with the key and ce_ headers it expects.
func TestKcatTypedInterop(t *testing.T) {
	bin := kcatPath(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := strings.Join(c.ListenAddrs(), ",")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	tr, err := kafka.New(ctx, kafka.Config{Brokers: c.ListenAddrs(), Topics: kafka.Provisioning{Partitions: 3}})
	if err != nil {
		t.Fatal(err)
	}
	b := bus.New(tr, bus.WithSource("/busway/interop"))
	defer b.Shutdown(context.Background())

	in, out := transporttest.UniqueTopic(t), transporttest.UniqueTopic(t)
	if err := bus.Register[OrderCreated](b, in); err != nil {
		t.Fatal(err)
	}
	if err := bus.Register[OrderShipped](b, out); err != nil {
		t.Fatal(err)
	}
	got := make(chan bus.Event[OrderCreated], 1)
	if _, err := bus.Subscribe(b, "interop", func(_ context.Context, e bus.Event[OrderCreated]) error {
		got <- e
		return nil
	}, bus.WithStartFrom(0)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}

	kcat(t, bin, `{"orderId":"42","total":9.5}`, "-P", "-b", brokers, "-t", in, "-k", "order-42",
		"-X", "partitioner=murmur2_random",
		"-H", "ce_specversion=1.0", "-H", "ce_id=evt-kcat-1", "-H", "ce_type=com.example.order.created",
		"-H", "ce_source=/kcat", "-H", "ce_time=2026-11-28T10:00:00Z", "-H", "ce_subject=orders/42",
		"-H", "content-type=application/json")
	select {
	case e := <-got:
		want := bus.Event[OrderCreated]{ID: "evt-kcat-1", Type: "com.example.order.created", Source: "/kcat",
			Subject: "orders/42", Key: "order-42", Data: OrderCreated{OrderID: "42", Total: 9.5}}
		if e.ID != want.ID || e.Type != want.Type || e.Source != want.Source || e.Subject != want.Subject ||
			e.Key != want.Key || e.Data != want.Data || !e.Time.Equal(time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)) {
			t.Errorf("typed subscriber decoded %+v, want %+v at 2026-11-28T10:00:00Z", e, want)
		}
	case <-ctx.Done():
		t.Fatal("the record kcat produced never reached the typed subscriber")
	}

	if err := bus.Publish(ctx, b, OrderShipped{OrderID: "7", Parcel: "P-7"}, bus.WithKey("order-7"), bus.WithSubject("orders/7")); err != nil {
		t.Fatal(err)
	}
	printed := kcat(t, bin, "", "-C", "-b", brokers, "-t", out, "-o", "beginning", "-c", "1", "-e",
		"-f", "key=%k|headers=%h|body=%s\n")
	for _, want := range []string{"key=order-7|", "ce_specversion=1.0", "ce_type=com.example.order.shipped",
		"ce_source=/busway/interop", "ce_subject=orders/7", "ce_partitionkey=order-7", "ce_id=", "ce_time=",
		"content-type=application/json", `body={"orderId":"7","parcel":"P-7"}`} {
		if !strings.Contains(printed, want) {
			t.Errorf("kcat printed %q, which lacks %q", printed, want)
		}
	}
}
