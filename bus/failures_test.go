package bus_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/internal/syncbuf"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A panicking handler, without the Recover middleware, counts as a failure
// in Stats, and the bus's logger receives the panic with its stack; the
// message is redelivered.
func TestPanicCountsAsFailureAndIsLogged(t *testing.T) {
	var logged syncbuf.Buffer
	var errs []error
	var mu sync.Mutex
	seen := func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
	observe := func(next transport.Handler) transport.Handler { // what Metrics and Tracing see
		return func(ctx context.Context, m *transport.Message) error {
			err := next(ctx, m)
			seen(err)
			return err
		}
	}
	b := bus.New(chanbus.New(chanbus.WithBackoff(time.Millisecond, time.Millisecond)),
		bus.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))), bus.WithMiddleware(observe))
	var calls int
	if _, err := bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n <= 2 {
			panic("nil map in billing")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	started(t, b)
	if err := bus.Publish(t.Context(), b, OrderCreated{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the third call to succeed", func() bool { return b.Stats().Handled == 1 })
	if s := b.Stats(); s.Failed != 2 || s.Handled != 1 {
		t.Errorf("Stats = %+v, want Failed 2 (the panics), Handled 1", s)
	}
	mu.Lock()
	defer mu.Unlock()
	var pe *transport.PanicError
	if len(errs) != 3 || !errors.As(errs[0], &pe) || pe.Value != "nil map in billing" || errs[2] != nil {
		t.Errorf("middleware saw %v, want two *transport.PanicError then nil", errs)
	}
	out := logged.String()
	for _, want := range []string{"level=ERROR", "handler panicked", "panic=\"nil map in billing\"", "stack=", "failures_test.go", "group=billing"} {
		if !strings.Contains(out, want) {
			t.Errorf("bus log lacks %q:\n%s", want, out)
		}
	}
}

// Publish of a pointer to a registered type publishes as that type, to its
// topic; Subscribe of the pointer type handles those events.
func TestPointerPublishAndSubscribe(t *testing.T) {
	ct := chanbus.New()
	b := bus.New(ct)
	if err := bus.Register[OrderCreated](b, "order-events"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var byValue, byPointer []string
	if _, err := bus.Subscribe(b, "values", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		mu.Lock()
		byValue = append(byValue, e.Data.ID)
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sub, err := bus.Subscribe(b, "pointers", func(ctx context.Context, e bus.Event[*OrderCreated]) error {
		mu.Lock()
		byPointer = append(byPointer, e.Data.ID)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Topic() != "order-events" || sub.Type() != "OrderCreated" {
		t.Errorf("Subscribe[*OrderCreated]: topic %q type %q, want order-events, OrderCreated", sub.Topic(), sub.Type())
	}
	started(t, b)
	if err := bus.Publish(t.Context(), b, &OrderCreated{ID: "p"}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(t.Context(), b, OrderCreated{ID: "v"}); err != nil {
		t.Fatal(err)
	}
	topic, m, err := bus.NewMessage(b, &OrderCreated{ID: "x"})
	if err != nil || topic != "order-events" || m.Header[transport.HeaderType] != "OrderCreated" {
		t.Errorf("NewMessage(*OrderCreated): topic %q, type %q, %v", topic, m.Header[transport.HeaderType], err)
	}
	if err := ct.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if strings.Join(byValue, ",") != "p,v" || strings.Join(byPointer, ",") != "p,v" {
		t.Errorf("value handler got %v, pointer handler %v; want [p v] each", byValue, byPointer)
	}
	mu.Unlock()
	if ct.Stats().Unrouted != 0 {
		t.Errorf("a publish went to a topic nobody subscribes to: %+v", ct.Stats())
	}
	err = bus.Publish(t.Context(), b, (*OrderCreated)(nil))
	if !errors.Is(err, transport.ErrInvalidMessage) || !strings.HasSuffix(err.Error(), "invalid message: nil *bus_test.OrderCreated") {
		t.Errorf("Publish of a nil pointer: %v", err)
	}
}

// chanbus counts what it drops for want of a group.
func TestChanbusCountsUnrouted(t *testing.T) {
	ct := chanbus.New()
	b := bus.New(ct)
	started(t, b)
	if err := bus.Publish(t.Context(), b, OrderCreated{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	if n := ct.Stats().Unrouted; n != 1 {
		t.Errorf("Unrouted = %d, want 1", n)
	}
}
