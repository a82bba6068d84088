package chanbus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/transport"
)

// The PublishCopier promise: once Publish returned, the caller may reuse
// its messages (Message, Header map, Body): every group's handler still
// gets what was published.
func TestPublishKeepsNothingOfTheCallers(t *testing.T) {
	var _ transport.PublishCopier = New()
	ctx := t.Context()
	tr := New()
	defer tr.Close()
	const n = 500
	got := map[string]chan string{"a": make(chan string, n), "b": make(chan string, n)}
	for g, ch := range got {
		sub, err := tr.Subscribe(ctx, "t", func(_ context.Context, m *transport.Message) error {
			ch <- fmt.Sprintf("%s %s %s %s", m.ID, m.Key, m.Header["h"], m.Body)
			return nil
		}, transport.SubscribeOptions{Group: g, Concurrency: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close(ctx)
	}
	m := &transport.Message{Header: map[string]string{}, Body: make([]byte, 0, 16)}
	for i := range n {
		s := fmt.Sprint(i)
		m.ID, m.Key, m.Header["h"], m.Body = "id"+s, "k"+s, "h"+s, append(m.Body[:0], "body"+s...)
		if err := tr.Publish(ctx, "t", m); err != nil {
			t.Fatal(err)
		}
		// Reuse everything at once.
		m.Header["h"] = "reused"
		clear(m.Body)
	}
	for g, ch := range got {
		seen := map[string]bool{}
		for range n {
			select {
			case s := <-ch:
				seen[s] = true
			case <-time.After(10 * time.Second):
				t.Fatalf("group %s: %d of %d messages", g, len(seen), n)
			}
		}
		for i := range n {
			s := fmt.Sprint(i)
			if want := fmt.Sprintf("id%s k%s h%s body%s", s, s, s, s); !seen[want] {
				t.Fatalf("group %s: %q not delivered as published", g, want)
			}
		}
	}
}

// A nil message is refused also on a topic with groups (whose name
// Publish does not check again), and nothing of its batch is queued.
func TestPublishNilToSubscribedTopic(t *testing.T) {
	ctx := t.Context()
	tr := New()
	defer tr.Close()
	var got atomic.Int64
	sub, err := tr.Subscribe(ctx, "t", func(context.Context, *transport.Message) error { got.Add(1); return nil },
		transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	err = tr.Publish(ctx, "t", &transport.Message{ID: "a"}, nil)
	if !errors.Is(err, transport.ErrInvalidMessage) || !strings.Contains(err.Error(), "#1 of 2") {
		t.Fatalf("publish with a nil message: %v, want ErrInvalidMessage naming message #1 of 2", err)
	}
	if err := tr.WaitSettled(ctx); err != nil {
		t.Fatal(err)
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("%d messages of the refused batch delivered", n)
	}
}
