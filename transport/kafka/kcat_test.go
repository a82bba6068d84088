package kafka

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// kcat returns the kcat binary, skipping the test when it is absent unless
// BUS_TEST_REQUIRE_KCAT=1 (CI), where that is a failure.
func kcat(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		if os.Getenv("BUS_TEST_REQUIRE_KCAT") == "1" {
			t.Fatalf("kcat is required (BUS_TEST_REQUIRE_KCAT=1) but not on PATH: %v (apt-get install kcat)", err)
		}
		t.Skip("kcat (a foreign Kafka client) is not installed: skipping the interop test (apt-get install kcat; BUS_TEST_REQUIRE_KCAT=1 makes this a failure)")
	}
	return path
}

func runKcat(t *testing.T, bin string, stdin []byte, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// TestKcatInterop: kcat, a librdkafka client, produces a CloudEvents
// record (binary mode, ce_ headers, a key) that a subscriber decodes, and
// consumes a busway record whose key and headers it prints as sent. Both
// place keys with murmur2, so they agree on the partition.
func TestKcatInterop(t *testing.T) {
	bin := kcat(t)
	c := newCluster(t)
	brokers := strings.Join(c.ListenAddrs(), ",")
	tr := open(t, testConfig(c.ListenAddrs()))

	t.Run("kcat produces", func(t *testing.T) {
		topic := transporttest.UniqueTopic(t)
		got := make(chan *transport.Message, 1)
		sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
			got <- m.Clone()
			return nil
		}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close(context.Background())
		body := `{"orderId":"42","total":9.5}`
		runKcat(t, bin, []byte(body), "-P", "-b", brokers, "-t", topic, "-k", "order-42",
			"-X", "partitioner=murmur2_random",
			"-H", "ce_specversion=1.0", "-H", "ce_id=evt-kcat-1", "-H", "ce_type=com.example.order.created",
			"-H", "ce_source=/kcat", "-H", "ce_time=2026-11-28T10:00:00Z", "-H", "content-type=application/json")
		var m *transport.Message
		select {
		case m = <-got:
		case <-time.After(30 * time.Second):
			t.Fatal("the kcat record was not delivered")
		}
		if m.ID != "evt-kcat-1" || m.Key != "order-42" || string(m.Body) != body {
			t.Errorf("ID %q, Key %q, Body %q", m.ID, m.Key, m.Body)
		}
		want := map[string]string{
			transport.HeaderSpecVersion: "1.0", transport.HeaderID: "evt-kcat-1", transport.HeaderType: "com.example.order.created",
			transport.HeaderSource: "/kcat", transport.HeaderTime: "2026-11-28T10:00:00Z", transport.HeaderContentType: "application/json",
		}
		for k, v := range want {
			if m.Header[k] != v {
				t.Errorf("Header[%q] = %q, want %q", k, m.Header[k], v)
			}
		}
		ids, _ := tr.partitions(t.Context(), topic)
		wantPart := (kafkago.Murmur2Balancer{}).Balance(kafkago.Message{Key: []byte("order-42")}, ids...)
		if m.Meta[transport.MetaPartition] != strconv.Itoa(wantPart) {
			t.Errorf("kcat (murmur2) put the key on partition %s, busway's partitioner says %d", m.Meta[transport.MetaPartition], wantPart)
		}
		t.Logf("delivered: key %q headers %v partition %s", m.Key, m.Header, m.Meta[transport.MetaPartition])
	})

	t.Run("kcat consumes", func(t *testing.T) {
		topic := transporttest.UniqueTopic(t)
		err := tr.Publish(t.Context(), topic, &transport.Message{
			ID: "evt-busway-1", Key: "order-7", Body: []byte(`{"orderId":"7"}`),
			Header: map[string]string{
				transport.HeaderSpecVersion: "1.0", transport.HeaderID: "evt-busway-1",
				transport.HeaderType: "com.example.order.created", transport.HeaderSource: "/busway",
				transport.HeaderContentType: "application/json",
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ids, _ := tr.partitions(t.Context(), topic)
		part := (kafkago.Murmur2Balancer{}).Balance(kafkago.Message{Key: []byte("order-7")}, ids...)
		out := runKcat(t, bin, nil, "-C", "-b", brokers, "-t", topic, "-o", "beginning", "-c", "1", "-e",
			"-f", "key=%k|partition=%p|headers=%h|body=%s\n")
		t.Logf("kcat printed: %s", out)
		for _, want := range []string{"key=order-7|", "partition=" + strconv.Itoa(part) + "|", "ce_id=evt-busway-1",
			"ce_type=com.example.order.created", "ce_source=/busway", "ce_specversion=1.0",
			"content-type=application/json", `body={"orderId":"7"}`} {
			if !strings.Contains(out, want) {
				t.Errorf("kcat output lacks %q", want)
			}
		}
		if strings.Contains(out, idHeader) {
			t.Errorf("kcat output shows %q although ce_id holds the ID", idHeader)
		}
	})
}
