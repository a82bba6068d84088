package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// freePorts returns n TCP ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	return ports
}

// TestBrokerRestart stops the whole kfake cluster while a group consumes and
// a publisher publishes, and starts it again on the same ports with its
// data kept (kfake.DataDir). No acknowledged message is lost, the
// subscription and the publisher recover without help, and the publishes
// that fail meanwhile fail with an error matching transport.ErrUnavailable.
func TestBrokerRestart(t *testing.T) {
	dir, ports := t.TempDir(), freePorts(t, 3)
	start := func() *kfake.Cluster {
		t.Helper()
		var c *kfake.Cluster
		var err error
		for range 50 { // the ports may still be held by the closed cluster
			if c, err = kfake.NewCluster(kfake.NumBrokers(3), kfake.Ports(ports...), kfake.DataDir(dir),
				kfake.DefaultNumPartitions(3), kfake.GroupMinSessionTimeout(500*time.Millisecond)); err == nil {
				return c
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("kfake on ports %v: %v", ports, err)
		return nil
	}
	c := start()
	defer func() { c.Close() }()
	cfg := testConfig(c.ListenAddrs())
	cfg.PublishRetries = 2
	tr := open(t, cfg)
	topic, group := transporttest.UniqueTopic(t), transporttest.UniqueGroup(t)

	var mu sync.Mutex
	handled := map[string]bool{}
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		handled[m.ID] = true
		mu.Unlock()
		return nil
	}, transport.SubscribeOptions{Group: group, StartFrom: transport.StartEarliest, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())

	var acked []string
	var outageErrs []error
	publish := func(i int) {
		id := "m-" + strconv.Itoa(i)
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		err := tr.Publish(ctx, topic, &transport.Message{ID: id, Key: "k" + strconv.Itoa(i%10), Body: []byte(id)})
		if err == nil {
			acked = append(acked, id)
		} else {
			outageErrs = append(outageErrs, err)
		}
	}
	for i := range 200 {
		publish(i)
	}
	c.Close() // the whole cluster goes away
	for i := 200; i < 205; i++ {
		publish(i) // fails: nothing answers
	}
	c = start()
	deadline := time.Now().Add(60 * time.Second)
	for i := 205; i < 400; i++ {
		publish(i)
		for len(acked) == 0 || acked[len(acked)-1] != "m-"+strconv.Itoa(i) {
			if time.Now().After(deadline) {
				t.Fatalf("publishing after the restart: %d acknowledged; last errors %v", len(acked), outageErrs[max(0, len(outageErrs)-3):])
			}
			publish(i)
		}
	}
	for _, err := range outageErrs {
		if !errors.Is(err, transport.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a publish during the outage failed with %v, want ErrUnavailable (or the caller's deadline)", err)
		}
	}
	if len(outageErrs) == 0 {
		t.Error("no publish failed while the cluster was down")
	}
	for {
		mu.Lock()
		missing := 0
		var first string
		for _, id := range acked {
			if !handled[id] {
				if missing == 0 {
					first = id
				}
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages not handled after the restart, e.g. %s", missing, len(acked), first)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d acknowledged, all handled; %d publishes failed during the outage (first: %v)", len(acked), len(outageErrs), fmt.Sprint(outageErrs[0]))
}
