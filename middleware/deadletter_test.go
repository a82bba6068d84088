package middleware_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

func TestDeadLetter(t *testing.T) {
	fixed := time.Date(2026, 11, 28, 12, 0, 0, 5, time.UTC)
	t.Run("retries exhausted", func(t *testing.T) {
		pub := &fakePub{}
		h := middleware.Chain(
			middleware.DeadLetter(pub, middleware.DeadLetterOptions{Now: func() time.Time { return fixed }}),
			middleware.Retry(tinyRetry(3)),
		)(failing(errBoom))
		in := msg("m1")
		in.Attempt = 2
		if err := h(context.Background(), in); err != nil {
			t.Fatalf("err = %v, want nil (acked after dead-lettering)", err)
		}
		topics, msgs := pub.got()
		if len(msgs) != 1 || topics[0] != "orders.dlq" {
			t.Fatalf("published %v", topics)
		}
		d := msgs[0]
		if d.Key != "k-m1" || string(d.Body) != `{"n":1}` || d.Header["h"] != "v" {
			t.Fatalf("dead-lettered message changed: %+v", d)
		}
		if d.ID != middleware.DeadLetterID("m1", "orders", "billing") || d.ID == "m1" {
			t.Errorf("dead letter ID %q, want DeadLetterID of the original (a new message)", d.ID)
		}
		if d.Header[transport.HeaderID] != "m1" || d.Header[middleware.HeaderDLQID] != "m1" {
			t.Errorf("ce_id %q, %s %q: want the original ID in both", d.Header[transport.HeaderID], middleware.HeaderDLQID, d.Header[middleware.HeaderDLQID])
		}
		want := map[string]string{
			middleware.HeaderDLQAttempts: "3",
			middleware.HeaderDLQDelivery: "2",
			middleware.HeaderDLQGroup:    "billing",
			middleware.HeaderDLQTopic:    "orders",
			middleware.HeaderDLQTime:     "2026-11-28T12:00:00.000000005Z",
		}
		for k, v := range want {
			if d.Header[k] != v {
				t.Errorf("header %s = %q, want %q", k, d.Header[k], v)
			}
		}
		if !strings.Contains(d.Header[middleware.HeaderDLQError], "boom") {
			t.Errorf("error header %q", d.Header[middleware.HeaderDLQError])
		}
		if _, ok := d.Header[middleware.HeaderDLQPermanent]; ok {
			t.Error("permanent header on a transient error")
		}
		// The original message is untouched.
		if len(in.Header) != 1 {
			t.Errorf("original headers changed: %v", in.Header)
		}
	})
	t.Run("permanent on the first attempt", func(t *testing.T) {
		pub := &fakePub{}
		var calls int
		h := middleware.Chain(middleware.DeadLetter(pub, middleware.DeadLetterOptions{}), middleware.Retry(tinyRetry(5)))(
			func(context.Context, *transport.Message) error { calls++; return transport.Permanent(errBoom) })
		if err := h(context.Background(), msg("m1")); err != nil {
			t.Fatal(err)
		}
		_, msgs := pub.got()
		if calls != 1 || len(msgs) != 1 || msgs[0].Header[middleware.HeaderDLQPermanent] != "true" ||
			msgs[0].Header[middleware.HeaderDLQAttempts] != "1" {
			t.Fatalf("calls %d, published %+v", calls, msgs)
		}
	})
	t.Run("panic reason in header, on one line", func(t *testing.T) {
		pub := &fakePub{}
		h := middleware.Chain(middleware.DeadLetter(pub, middleware.DeadLetterOptions{}), middleware.Recover())(
			func(context.Context, *transport.Message) error { panic("line1\nline2") })
		if err := h(context.Background(), msg("m1")); err != nil {
			t.Fatal(err)
		}
		_, msgs := pub.got()
		e := msgs[0].Header[middleware.HeaderDLQError]
		if !strings.Contains(e, "line1") || !strings.Contains(e, "line2") || strings.ContainsAny(e, "\r\n") {
			t.Fatalf("error header %q", e)
		}
	})
	t.Run("long error truncated", func(t *testing.T) {
		pub := &fakePub{}
		h := middleware.DeadLetter(pub, middleware.DeadLetterOptions{})(failing(errors.New(strings.Repeat("é", 2000))))
		if err := h(context.Background(), msg("m1")); err != nil {
			t.Fatal(err)
		}
		_, msgs := pub.got()
		if e := msgs[0].Header[middleware.HeaderDLQError]; len(e) > middleware.MaxDLQErrorLen || !strings.HasPrefix(e, "éé") || strings.ContainsRune(e, '\uFFFD') {
			t.Fatalf("error header len %d", len(e))
		}
	})
	t.Run("publish failure: not acked", func(t *testing.T) {
		pub := &fakePub{}
		pub.setFail(transport.ErrUnavailable)
		h := middleware.DeadLetter(pub, middleware.DeadLetterOptions{Topic: func(t string) string { return "dead." + t }})(failing(errBoom))
		err := h(context.Background(), msg("m1"))
		var de *middleware.DeadLetterError
		if !errors.Is(err, errBoom) || !errors.Is(err, transport.ErrUnavailable) || !errors.As(err, &de) || de.Topic != "dead.orders" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("ctx ended: not dead-lettered", func(t *testing.T) {
		pub := &fakePub{}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		h := middleware.DeadLetter(pub, middleware.DeadLetterOptions{})(failing(errBoom))
		if err := h(ctx, msg("m1")); !errors.Is(err, errBoom) {
			t.Fatalf("err = %v", err)
		}
		if _, msgs := pub.got(); len(msgs) != 0 {
			t.Fatal("dead-lettered during shutdown")
		}
	})
	t.Run("success passes", func(t *testing.T) {
		pub := &fakePub{}
		if err := middleware.DeadLetter(pub, middleware.DeadLetterOptions{})(ok)(context.Background(), msg("m1")); err != nil {
			t.Fatal(err)
		}
		if _, msgs := pub.got(); len(msgs) != 0 {
			t.Fatal("published on success")
		}
	})
	t.Run("nil publisher: error, not ack", func(t *testing.T) {
		err := middleware.DeadLetter(nil, middleware.DeadLetterOptions{})(failing(errBoom))(context.Background(), msg("m1"))
		if !errors.Is(err, transport.ErrInvalidOptions) || !errors.Is(err, errBoom) {
			t.Fatalf("err = %v", err)
		}
	})
}
