package kafka

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// A handler that ends its goroutine with runtime.Goexit (t.FailNow in a
// handler) fails that attempt: the message is retried in place, the
// messages behind it are handled, and Close returns. With Concurrency 1 the
// only worker's goroutine ends.
func TestHandlerGoexit(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.Topics.Partitions = 1
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)
	var mu sync.Mutex
	var order []string
	attempts := make(map[string]int)
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		attempts[m.ID] = m.Attempt
		if m.ID == "exit" && m.Attempt == 1 {
			mu.Unlock()
			runtime.Goexit()
		}
		order = append(order, m.ID)
		mu.Unlock()
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), topic,
		&transport.Message{ID: "exit", Key: "k"}, &transport.Message{ID: "after", Key: "k"}, &transport.Message{ID: "other", Key: "o"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(order)
		mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			mu.Lock()
			t.Errorf("handled %v (attempts %v): the messages after a handler's runtime.Goexit were not handled", order, attempts)
			mu.Unlock()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- sub.Close(context.Background()) }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close hangs after a handler's runtime.Goexit")
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts["exit"] != 2 {
		t.Errorf("the message whose handler exited was attempted %d times, want 2 (failed, then retried in place)", attempts["exit"])
	}
	var ia, ie int
	for i, id := range order {
		switch id {
		case "after":
			ia = i
		case "exit":
			ie = i
		}
	}
	if ia < ie {
		t.Errorf("order %v: its key's next message ran before the retry", order)
	}
}
