package middleware_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

type capturePub struct{ got []*transport.Message }

func (p *capturePub) Publish(_ context.Context, _ string, msgs ...*transport.Message) error {
	p.got = append(p.got, msgs...)
	return nil
}

// FuzzDeadLetter: whatever a failed message carries (header names and
// values, IDs, topic, group, error text), its dead letter has only header
// names every transport accepts and values it delivers unchanged, adds at most
// DLQHeaderBudget bytes, parses back with ParseDeadLetter to what
// happened, and keeps each original header under a name OriginalHeaderName
// turns back into the original. ParseDeadLetter never panics on any
// headers and names what it refuses.
func FuzzDeadLetter(f *testing.F) {
	f.Add("ce_type: OrderCreated\nce_id: 1", "id-1", "orders", "billing", "boom", 3, false, []byte(`{}`))
	f.Add("bad name: x\nweird\x00: y\n%41: z\n: empty", strings.Repeat("i", 200), "t", "g", "line1\nline2\r\n", 1, true, []byte{})
	f.Add("busway-dlq-error: old\nbusway-dlq-attempts: x", "", strings.Repeat("t", 300), strings.Repeat("g", 300), strings.Repeat("é", 400), 0, false, []byte("b"))
	f.Add("busway-dlq-topic: x\nbusway-dlq-time: yesterday\nbusway-dlq-attempts: -1\nbusway-dlq-permanent: maybe", "x", "a", "b", "c", 2, false, []byte(nil))
	now := time.Date(2026, 12, 1, 9, 0, 0, 123, time.UTC)
	f.Fuzz(func(t *testing.T, headers, id, topic, group, errText string, attempt int, permanent bool, body []byte) {
		h := map[string]string{}
		for line := range strings.SplitSeq(headers, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				h[k] = v
			}
		}
		// ParseDeadLetter on anything: no panic, a clear error.
		if _, err := middleware.ParseDeadLetter(h); err != nil && !errors.Is(err, middleware.ErrNotDeadLetter) &&
			(!errors.Is(err, transport.ErrInvalidMessage) || !strings.Contains(err.Error(), "busway-dlq-")) {
			t.Fatalf("ParseDeadLetter(%q) = %v: not a clear error", h, err)
		}

		m := &transport.Message{ID: id, Key: "k", Header: h, Body: body, Topic: topic, Group: group, Attempt: attempt}
		herr := errors.New(errText)
		if permanent {
			herr = transport.Permanent(herr)
		}
		pub := &capturePub{}
		dl := middleware.DeadLetter(pub, middleware.DeadLetterOptions{Now: func() time.Time { return now },
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := dl(func(context.Context, *transport.Message) error { return herr })(context.Background(), m); err != nil {
			t.Fatalf("DeadLetter returned %v after a successful publish", err)
		}
		if len(pub.got) != 1 {
			t.Fatalf("%d dead letters published", len(pub.got))
		}
		d := pub.got[0]
		added := 0
		for k, v := range d.Header {
			if !transport.ValidHeaderName(k) {
				t.Fatalf("dead letter header name %q is refused by some transport", k)
			}
			if err := transport.HeaderValueError(v); err != nil {
				t.Fatalf("dead letter header %q=%q: %v", k, v, err)
			}
			if strings.HasPrefix(k, "busway-dlq-") {
				added += len(k) + len(v)
			}
		}
		if _, had := h[transport.HeaderID]; !had {
			added += len(transport.HeaderID) + len(d.Header[transport.HeaderID])
		}
		if added > middleware.DLQHeaderBudget {
			t.Fatalf("dead letter adds %d header bytes, more than DLQHeaderBudget %d", added, middleware.DLQHeaderBudget)
		}
		info, err := middleware.ParseDeadLetter(d.Header)
		if err != nil {
			t.Fatalf("ParseDeadLetter of a dead letter: %v", err)
		}
		wantAttempts := 1
		if info.Attempts != wantAttempts || info.Permanent != permanent || !info.Time.Equal(now) ||
			(attempt > 0 && info.Delivery != attempt) || (attempt <= 0 && info.Delivery != 0) {
			t.Fatalf("ParseDeadLetter = %+v, want attempts 1, permanent %v, time %v, delivery %d", info, permanent, now, attempt)
		}
		shown := func(s string) string { return strings.Trim(strings.ReplaceAll(s, "\n", " | "), " \t") }
		if !strings.HasPrefix(shown(topic), info.Topic) || !strings.HasPrefix(shown(group), info.Group) {
			if !strings.ContainsAny(topic+group, "\r") {
				t.Fatalf("ParseDeadLetter topic %q group %q, from %q %q", info.Topic, info.Group, topic, group)
			}
		}
		if len(id) <= middleware.MaxDLQIDLen && transport.HeaderValueError(id) == nil && info.OriginalID != id {
			t.Fatalf("OriginalID %q, want %q", info.OriginalID, id)
		}
		for k, v := range h {
			if strings.HasPrefix(k, "busway-dlq-") || (k == transport.HeaderID && v == "") {
				continue
			}
			found := false
			for dk, dv := range d.Header {
				if middleware.OriginalHeaderName(dk) == k {
					found = true
					if transport.HeaderValueError(v) == nil && dv != v || len(dv) > len(v) {
						t.Fatalf("header %q=%q became %q=%q", k, v, dk, dv)
					}
				}
			}
			if !found {
				t.Fatalf("header %q of the original is not on the dead letter (%q)", k, d.Header)
			}
		}
		if string(d.Body) != string(body) || d.Key != m.Key {
			t.Fatalf("dead letter body or key changed")
		}
	})
}
