package chanbus

import (
	"context"
	"errors"
	"fmt"
	"maps"
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

// A recycled delivery's Header holds exactly the published message's
// entries, whatever the messages before it held and whatever their
// handlers did to their Header (added, deleted, replaced, set to nil).
func TestRecycledHeaderIsExact(t *testing.T) {
	ctx := t.Context()
	tr := New()
	defer tr.Close()
	headers := []map[string]string{
		{"a": "1"},
		{"a": "2"},
		{"a": "2", "b": "x"},
		{"b": "x"},
		{"c": "y"},
		{},
		nil,
		{"a": "3", "b": "z"},
		{"b": "z", "a": "3"},
		{"a": "", "b": ""},
	}
	type seen struct {
		i int
		h map[string]string
	}
	got := make(chan seen, 1)
	sub, err := tr.Subscribe(ctx, "t", func(_ context.Context, m *transport.Message) error {
		var i int
		fmt.Sscan(m.ID, &i)
		var h map[string]string
		if m.Header != nil {
			h = maps.Clone(m.Header)
		}
		got <- seen{i, h}
		// Whatever a handler does to the Header, the next copy is exact.
		switch i % 4 {
		case 0:
			if m.Header != nil {
				m.Header["added"] = "by handler"
			}
		case 1:
			for k := range m.Header {
				delete(m.Header, k)
				break
			}
		case 2:
			m.Header = map[string]string{"replaced": "1"}
		case 3:
			m.Header = nil
		}
		return nil
	}, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	for i := range 200 {
		m := &transport.Message{ID: fmt.Sprint(i), Key: "k", Header: maps.Clone(headers[(i*7+i/len(headers))%len(headers)])}
		if err := tr.Publish(ctx, "t", m); err != nil {
			t.Fatal(err)
		}
		s := <-got
		if s.i != i {
			t.Fatalf("message %d delivered as %d", i, s.i)
		}
		if (s.h == nil) != (m.Header == nil) || !maps.Equal(s.h, m.Header) {
			t.Fatalf("message %d: handler saw Header %v, published %v", i, s.h, m.Header)
		}
	}
}

// The freshest batches of recycled deliveries are reused first, and the
// stack keeps no more than freshMax of them.
func TestFreshStackKeepsTheNewest(t *testing.T) {
	var s freshStack
	lists := make([]*freeList, freshMax+1)
	for i := range lists {
		// Each with a delivery: the one pushed out goes to the package's
		// pool, where a Publish may take it (an empty one made it panic).
		lists[i] = &freeList{ds: []*delivery{new(delivery)}}
		s.push(lists[i])
	}
	for i := len(lists) - 1; i >= 1; i-- {
		if got := s.pop(); got != lists[i] {
			t.Fatalf("pop %d: got another batch than the one pushed %d from the end", len(lists)-1-i, len(lists)-1-i)
		}
	}
	if got := s.pop(); got != nil {
		t.Fatalf("the stack kept more than freshMax (%d) batches", freshMax)
	}
}
