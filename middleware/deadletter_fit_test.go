package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// sizedPub accepts a message only when its body and headers (names and
// values) take at most limit bytes, as a broker with a size limit does, and
// refuses header names transport.ValidateHeader refuses, as nats.go does.
type sizedPub struct {
	limit int
	mu    sync.Mutex
	tries int
	got   []*transport.Message
}

func size(m *transport.Message) int {
	n := len(m.Body) + len(m.ID)
	for k, v := range m.Header {
		n += len(k) + len(v)
	}
	return n
}

func (p *sizedPub) Publish(_ context.Context, topic string, msgs ...*transport.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tries++
	for _, m := range msgs {
		for k, v := range m.Header {
			if err := transport.ValidateHeader(k, v); err != nil {
				return err
			}
		}
		if err := transport.HeaderValueError(m.Key); err != nil { // NATS carries it as a header
			return fmt.Errorf("%w: Key: %v", transport.ErrInvalidMessage, err)
		}
		if n := size(m); n > p.limit {
			return fmt.Errorf("%w: %d bytes, limit %d", transport.ErrMessageTooLarge, n, p.limit)
		}
		p.got = append(p.got, m.Clone())
	}
	return nil
}

// TestDeadLetterFits: issue 8, defect 6. A dead letter is publishable
// whenever its original was: its headers are bounded, refused header names
// and line breaks are made safe, and a broker's "too large" leads to a
// smaller dead letter, not to retrying the original for ever.
func TestDeadLetterFits(t *testing.T) {
	longErr := errors.New(strings.Repeat("a very long error text; ", 200))
	t.Run("headers within the budget", func(t *testing.T) {
		pub := &sizedPub{limit: 1 << 20}
		m := msg("m1")
		m.Group = strings.Repeat("g", transport.MaxNameLength)
		m.Topic = strings.Repeat("t", transport.MaxNameLength)
		if err := middleware.DeadLetter(pub, middleware.DeadLetterOptions{})(failing(longErr))(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		d := pub.got[0]
		added := size(d) - size(m) + len(m.ID) - len(d.ID)
		if added > middleware.DLQHeaderBudget {
			t.Errorf("DeadLetter added %d bytes of headers, budget %d: %v", added, middleware.DLQHeaderBudget, d.Header)
		}
		if e := d.Header[middleware.HeaderDLQError]; e == "" || len(e) > middleware.MaxDLQErrorLen {
			t.Errorf("error header of %d bytes", len(e))
		}
	})
	t.Run("near the size limit: the original fits, so does its dead letter", func(t *testing.T) {
		const limit = 64 << 10
		m := msg("m1")
		m.Body = bytes.Repeat([]byte("x"), limit-size(m)) // exactly at the limit
		// The broker takes the original but not the original plus 1 KiB.
		pub := &sizedPub{limit: limit + 200}
		if err := middleware.DeadLetter(pub, middleware.DeadLetterOptions{})(failing(longErr))(context.Background(), m); err != nil {
			t.Fatalf("err = %v, want the smaller dead letter published and the original acked", err)
		}
		if pub.tries != 2 || len(pub.got) != 1 {
			t.Fatalf("%d publish tries, %d accepted; want the second, smaller, accepted", pub.tries, len(pub.got))
		}
		d := pub.got[0]
		for _, k := range []string{middleware.HeaderDLQGroup, middleware.HeaderDLQTopic, middleware.HeaderDLQAttempts, middleware.HeaderDLQID} {
			if d.Header[k] == "" {
				t.Errorf("smaller dead letter lacks %s: %v", k, d.Header)
			}
		}
		if !bytes.Equal(d.Body, m.Body) {
			t.Error("body changed")
		}
	})
	t.Run("header names a transport refuses, values with line breaks", func(t *testing.T) {
		pub := &sizedPub{limit: 1 << 20}
		m := msg("m1")
		// Values and a key from a transport that carries any (Kafka), dead-
		// lettered where NATS's rules hold.
		m.Header = map[string]string{"x(y)": "1", "with space": "2", "50%": "3", "ok": "line1\nline2", "pad": " v\t",
			"Nats-Msg-Id": "4", "ce-x": "5", "busway-id": "6", "nats-rollup": "7"}
		m.Key = " key\n"
		if err := middleware.DeadLetter(pub, middleware.DeadLetterOptions{})(failing(errors.New("boom\n")))(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		if len(pub.got) != 1 || pub.tries != 1 {
			t.Fatalf("%d publish tries, %d accepted; want the dead letter accepted at once", pub.tries, len(pub.got))
		}
		h := pub.got[0].Header
		if h["pad"] != "v" || pub.got[0].Key != "key" || h[middleware.HeaderDLQError] == "" {
			t.Errorf("pad %q, key %q, error %q: want the values as NATS delivers them (trimmed, one line)", h["pad"], pub.got[0].Key, h[middleware.HeaderDLQError])
		}
		for k, v := range map[string]string{"x%28y%29": "1", "with%20space": "2", "50%25": "3",
			"%4Eats-Msg-Id": "4", "%63e-x": "5", "%62usway-id": "6", "%6Eats-rollup": "7"} {
			if h[k] != v {
				t.Errorf("header %q = %q, want %q (renamed, percent-encoded): %v", k, h[k], v, h)
			}
			if orig := middleware.OriginalHeaderName(k); m.Header[orig] != v {
				t.Errorf("OriginalHeaderName(%q) = %q, not the original's name", k, orig)
			}
		}
		for k, v := range h {
			if err := transport.ValidateHeader(k, v); err != nil {
				t.Errorf("the dead letter has a header no transport may take: %v", err)
			}
		}
		if strings.ContainsAny(h["ok"], "\r\n") || !strings.Contains(h["ok"], "line2") {
			t.Errorf("value %q", h["ok"])
		}
	})
	t.Run("unpublishable for good: dropped, logged, acked", func(t *testing.T) {
		pub := &sizedPub{limit: 10}
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		err := middleware.DeadLetter(pub, middleware.DeadLetterOptions{Logger: log})(failing(errBoom))(context.Background(), msg("m1"))
		if err != nil {
			t.Fatalf("err = %v, want nil: retrying cannot help and would block the key for ever", err)
		}
		if pub.tries != 2 {
			t.Errorf("%d publish tries, want 2", pub.tries)
		}
		for _, s := range []string{"level=ERROR", "dropped", "id=m1", "topic=orders", "group=billing", "boom", "too large"} {
			if !strings.Contains(buf.String(), s) {
				t.Errorf("log %q lacks %q", buf.String(), s)
			}
		}
	})
	t.Run("unpublishable: OnUnpublishable decides", func(t *testing.T) {
		pub := &sizedPub{limit: 10}
		var seen *transport.Message
		keep := errors.New("keep it")
		err := middleware.DeadLetter(pub, middleware.DeadLetterOptions{OnUnpublishable: func(_ context.Context, m *transport.Message, err error) error {
			seen = m.Clone()
			if !errors.Is(err, transport.ErrMessageTooLarge) || !errors.Is(err, errBoom) {
				t.Errorf("hook error %v", err)
			}
			return keep
		}})(failing(errBoom))(context.Background(), msg("m1"))
		if !errors.Is(err, keep) || seen == nil || seen.ID != "m1" {
			t.Fatalf("err = %v, seen %v", err, seen)
		}
	})
	t.Run("dead letter IDs", func(t *testing.T) {
		a, b := middleware.DeadLetterID("e1", "orders", "billing"), middleware.DeadLetterID("e1", "orders", "shipping")
		if a == b || a == "e1" || a != middleware.DeadLetterID("e1", "orders", "billing") || a == middleware.DeadLetterID("e1", "payments", "billing") {
			t.Errorf("IDs %q %q: want deterministic, one per (ID, topic, group), never the source's", a, b)
		}
		if middleware.DeadLetterID("", "orders", "billing") != "" {
			t.Error("an empty ID has an empty dead letter ID")
		}
	})
}
