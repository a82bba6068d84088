package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// Note is an event whose body differs in size from one event to the next,
// so that recycled buffers are reused shorter and longer.
type Note struct {
	Seq  int    `json:"seq"`
	Text string `json:"text"`
}

// On chanbus (a transport.PublishCopier) Publish recycles its messages'
// memory; events published concurrently, of every size, each reach two
// groups intact: data, ID, key and headers, also kept after the handler
// returned.
func TestPublishRecyclingKeepsEventsIntact(t *testing.T) {
	// Bounded: a message damaged into one that does not decode is
	// redelivered forever, and its shard stops the publishers.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	b := bus.New(chanbus.New(chanbus.WithDrainTimeout(time.Second)))
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
	}()
	const publishers, per = 4, 300
	const n = publishers * per
	kept := map[string]chan bus.Event[Note]{"a": make(chan bus.Event[Note], n), "b": make(chan bus.Event[Note], n)}
	for g, ch := range kept {
		if _, err := bus.Subscribe(b, g, func(_ context.Context, e bus.Event[Note]) error {
			ch <- e
			return nil
		}, bus.WithConcurrency(3)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	text := func(seq int) string { return strings.Repeat(string(rune('a'+seq%26)), seq%700) }
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range per {
				seq := p*per + i
				s := fmt.Sprint(seq)
				if err := bus.Publish(ctx, b, Note{Seq: seq, Text: text(seq)}, bus.WithKey("k"+s), bus.WithHeader("seq", s)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for g, ch := range kept {
		ids := map[string]bool{}
		var events []bus.Event[Note]
		for range n {
			select {
			case e := <-ch:
				events = append(events, e)
			case <-time.After(10 * time.Second):
				t.Fatalf("group %s: %d of %d events handled", g, len(events), n)
			}
		}
		for _, e := range events {
			s := fmt.Sprint(e.Data.Seq)
			if e.Data.Text != text(e.Data.Seq) || e.Key != "k"+s || e.Header["seq"] != s ||
				e.Header[transport.HeaderID] != e.ID || e.Header[transport.HeaderPartitionKey] != e.Key {
				t.Fatalf("group %s: event %d arrived changed: key %q, header %v, text of %d bytes", g, e.Data.Seq, e.Key, e.Header, len(e.Data.Text))
			}
			if ids[e.ID] {
				t.Fatalf("group %s: ID %s twice", g, e.ID)
			}
			ids[e.ID] = true
		}
	}
}

// htmlish marshals itself; its text has characters json.Marshal escapes.
type htmlish struct{ s string }

func (h htmlish) MarshalJSON() ([]byte, error) { return json.Marshal("<" + h.s + "&>") }

type Tricky struct {
	HTML   string   `json:"html"`
	Custom htmlish  `json:"custom"`
	Ptr    *int     `json:"ptr,omitempty"`
	List   []string `json:"list"`
}

// failing cannot be encoded.
type Failing struct {
	C chan int `json:"c"`
}

// The body Publish sends when it recycles is exactly json.Marshal's, and
// an event that fails to encode leaves no trace in the next one.
func TestPublishRecyclingBodyIsMarshals(t *testing.T) {
	ctx := t.Context()
	b := bus.New(chanbus.New())
	defer b.Shutdown(context.Background())
	bodies := make(chan []byte, 10)
	if _, err := bus.Subscribe(b, "raw", func(_ context.Context, e bus.Event[Tricky]) error { return nil },
		bus.WithGroupMiddleware(func(next transport.Handler) transport.Handler {
			return func(ctx context.Context, m *transport.Message) error {
				bodies <- append([]byte(nil), m.Body...)
				return next(ctx, m)
			}
		})); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	seven := 7
	for _, v := range []Tricky{
		{HTML: "<script>&amp;</script>\u2028", Custom: htmlish{"x"}, Ptr: &seven, List: []string{"a", "b"}},
		{HTML: "short"},
	} {
		err := bus.Publish(ctx, b, Failing{C: make(chan int)})
		var ute *json.UnsupportedTypeError
		if !errors.As(err, &ute) {
			t.Fatalf("publish of a channel: %v, want a *json.UnsupportedTypeError", err)
		}
		if err := bus.Publish(ctx, b, v); err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-bodies:
			if string(got) != string(want) {
				t.Fatalf("body %s, want json.Marshal's %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("not delivered")
		}
	}
}

// Recycled messages of one type and of another, with and without a key, a
// subject and an extra header, in turn: each event arrives with exactly its
// own headers (Publish rewrites only the attributes that change when a
// recycled message had the same shape).
func TestPublishRecyclingHeadersOfEachShape(t *testing.T) {
	ctx := t.Context()
	b := bus.New(chanbus.New(), bus.WithSource("shapes"))
	defer b.Shutdown(context.Background())
	type got struct {
		typ    string
		header map[string]string
	}
	seen := make(chan got, 64)
	if _, err := bus.Subscribe(b, "g", func(_ context.Context, e bus.Event[Note]) error {
		seen <- got{"Note", e.Header}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Subscribe(b, "g", func(_ context.Context, e bus.Event[Receipt]) error {
		seen <- got{"Receipt", e.Header}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	shapes := [][]bus.PublishOption{
		nil, nil, {bus.WithKey("k1")}, {bus.WithKey("k2")}, nil, {bus.WithSubject("s1")},
		{bus.WithKey("k3"), bus.WithSubject("s2")}, {bus.WithHeader("x-extra", "1")}, nil, {bus.WithKey("k4")}, nil,
	}
	for round := range 3 {
		for i, opts := range shapes {
			typ := "Note"
			var err error
			if (i+round)%3 == 0 {
				typ = "Receipt"
				err = bus.Publish(ctx, b, Receipt{ID: fmt.Sprint(i)}, opts...)
			} else {
				err = bus.Publish(ctx, b, Note{Seq: i}, opts...)
			}
			if err != nil {
				t.Fatal(err)
			}
			var g got
			select {
			case g = <-seen:
			case <-time.After(10 * time.Second):
				t.Fatal("not delivered")
			}
			want := map[string]bool{transport.HeaderSpecVersion: true, transport.HeaderID: true, transport.HeaderSource: true,
				transport.HeaderType: true, transport.HeaderTime: true, transport.HeaderContentType: true}
			if k := optKey(i); k != "" {
				want[transport.HeaderPartitionKey] = true
			}
			if s := optSubject(i); s != "" {
				want[transport.HeaderSubject] = true
			}
			if i == 7 {
				want["x-extra"] = true
			}
			if g.typ != typ || len(g.header) != len(want) || g.header[transport.HeaderType] != typ || g.header[transport.HeaderSource] != "shapes" {
				t.Fatalf("round %d, event %d (%s): handled as %s with headers %v", round, i, typ, g.typ, g.header)
			}
			for k := range want {
				if g.header[k] == "" {
					t.Fatalf("round %d, event %d: header %s missing from %v", round, i, k, g.header)
				}
			}
			if g.header[transport.HeaderPartitionKey] != optKey(i) || g.header[transport.HeaderSubject] != optSubject(i) {
				t.Fatalf("round %d, event %d: key %q, subject %q, want %q, %q", round, i,
					g.header[transport.HeaderPartitionKey], g.header[transport.HeaderSubject], optKey(i), optSubject(i))
			}
		}
	}
}

// optKey and optSubject are the key and subject of event i of
// TestPublishRecyclingHeadersOfEachShape's shapes.
func optKey(i int) string {
	return map[int]string{2: "k1", 3: "k2", 6: "k3", 9: "k4"}[i]
}

func optSubject(i int) string { return map[int]string{5: "s1", 6: "s2"}[i] }
