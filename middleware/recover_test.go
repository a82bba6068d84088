package middleware_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// TestRecoverGoexit: a handler's runtime.Goexit cannot be stopped, so the
// attempt ends the goroutine (as the transport sees it); Recover fails the
// message's next delivery permanently without running the handler, once,
// and only for that (topic, group, ID).
func TestRecoverGoexit(t *testing.T) {
	var calls atomic.Int32
	h := middleware.Recover()(func(ctx context.Context, m *transport.Message) error {
		calls.Add(1)
		if m.Header["exit"] == "1" {
			runtime.Goexit()
		}
		return nil
	})
	// deliver runs h as a transport's worker does, on its own goroutine,
	// and reports whether h returned.
	deliver := func(m *transport.Message) (err error, returned bool) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			err = h(context.Background(), m)
			returned = true
		}()
		<-done
		return err, returned
	}
	m := &transport.Message{ID: "m1", Topic: "orders", Group: "billing", Attempt: 1, Header: map[string]string{"exit": "1"}}
	if _, returned := deliver(m); returned {
		t.Fatal("the Goexit attempt returned")
	}
	other := &transport.Message{ID: "m1", Topic: "orders", Group: "shipping", Attempt: 1}
	if err, _ := deliver(other); err != nil {
		t.Fatalf("another group's delivery of the same ID: %v, want it run and nil", err)
	}
	m.Attempt = 2
	err, returned := deliver(m)
	if !returned || !errors.Is(err, transport.ErrHandlerGoexit) || !transport.IsPermanent(err) {
		t.Fatalf("redelivery after a Goexit: returned %v, err %v; want a permanent error wrapping ErrHandlerGoexit", returned, err)
	}
	if got := calls.Load(); got != 2 {
		t.Fatalf("handler ran %d times, want 2 (not on the redelivery)", got)
	}
	m.Attempt, m.Header = 3, nil
	if err, _ := deliver(m); err != nil || calls.Load() != 3 {
		t.Fatalf("a later delivery: %v after %d calls, want the handler run again", err, calls.Load())
	}
}
