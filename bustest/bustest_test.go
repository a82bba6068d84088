package bustest_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/bustest"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type OrderCreated struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

type InvoiceIssued struct {
	Order  string `json:"order"`
	Amount int    `json:"amount"`
}

type InvoiceMailed struct {
	Order string `json:"order"`
}

// billing is code under test: it issues an invoice for every order.
type billing struct{ b *bus.Bus }

func (s billing) OnOrderCreated(ctx context.Context, e bus.Event[OrderCreated]) error {
	if e.Data.Amount <= 0 {
		return bus.Permanent(errors.New("order without amount"))
	}
	return bus.Publish(ctx, s.b, InvoiceIssued{Order: e.Data.ID, Amount: e.Data.Amount}, bus.WithKey(e.Data.ID))
}

// The handler test of the package doc.
func TestBilling(t *testing.T) {
	h := bustest.New(t)
	if _, err := bus.Subscribe(h.Bus(), "billing", billing{h.Bus()}.OnOrderCreated); err != nil {
		t.Fatal(err)
	}

	if err := bus.Publish(t.Context(), h.Bus(), OrderCreated{ID: "42", Amount: 1999}); err != nil {
		t.Fatal(err)
	}
	h.Wait()

	got := bustest.Published[InvoiceIssued](h)
	if len(got) != 1 || got[0].Data != (InvoiceIssued{Order: "42", Amount: 1999}) || got[0].Key != "42" || got[0].Topic != "InvoiceIssued" {
		t.Errorf("invoices: %+v", got)
	}
	calls := bustest.Handled[OrderCreated](h)
	if len(calls) != 1 || calls[0].Err != nil || calls[0].Group != "billing" || calls[0].Attempt != 1 || calls[0].Data.ID != "42" {
		t.Errorf("handler calls: %+v", calls)
	}
}

// WaitIdle waits for chains of events: each handler publishes the next.
func TestWaitIdleFollowsChains(t *testing.T) {
	h := bustest.New(t)
	b := h.Bus()
	must(t, subscribe(b, "billing", billing{b}.OnOrderCreated))
	must(t, subscribe(b, "mailer", func(ctx context.Context, e bus.Event[InvoiceIssued]) error {
		return bus.Publish(ctx, b, InvoiceMailed{Order: e.Data.Order}, bus.WithKey(e.Data.Order))
	}))
	var mailed []string
	must(t, subscribe(b, "audit", func(ctx context.Context, e bus.Event[InvoiceMailed]) error {
		mailed = append(mailed, e.Data.Order) // one key at a time per key; keys differ: see the sort below
		return nil
	}))
	for _, id := range []string{"1", "2", "3"} {
		if err := bus.Publish(t.Context(), b, OrderCreated{ID: id, Amount: 1}); err != nil {
			t.Fatal(err)
		}
	}
	h.Wait()
	var orders []string
	for _, e := range bustest.Published[InvoiceMailed](h) {
		orders = append(orders, e.Data.Order)
	}
	slices.Sort(orders)
	if !slices.Equal(orders, []string{"1", "2", "3"}) || len(bustest.Handled[InvoiceMailed](h)) != 3 {
		t.Errorf("mailed %v, audit handled %d", orders, len(bustest.Handled[InvoiceMailed](h)))
	}
	if f := h.Failures(); len(f) != 0 {
		t.Errorf("failures: %v", f)
	}
	if s := h.Stats(); s.Published != 9 || s.Handled != 9 {
		t.Errorf("Stats = %+v", s)
	}
}

func subscribe[T any](b *bus.Bus, group string, fn func(context.Context, bus.Event[T]) error) error {
	_, err := bus.Subscribe(b, group, fn)
	return err
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Failures are recorded with their errors: a permanent handler error and a
// body that does not decode, each handled once (not redelivered).
func TestFailuresAreRecorded(t *testing.T) {
	h := bustest.New(t)
	b := h.Bus()
	must(t, subscribe(b, "billing", billing{b}.OnOrderCreated))
	if err := bus.Publish(t.Context(), b, OrderCreated{ID: "0"}); err != nil {
		t.Fatal(err)
	}
	h.Wait()
	calls := bustest.Handled[OrderCreated](h)
	if len(calls) != 1 || !bus.IsPermanent(calls[0].Err) || !strings.Contains(calls[0].Err.Error(), "without amount") {
		t.Fatalf("calls %+v", calls)
	}
	if s := h.Stats(); s.Failed != 1 {
		t.Errorf("Stats = %+v", s)
	}
	h.Reset()

	// A foreign producer's message whose body is not an OrderCreated.
	err := h.Transport().Publish(t.Context(), "OrderCreated", &transport.Message{ID: "raw-1",
		Header: map[string]string{transport.HeaderType: "OrderCreated"}, Body: []byte(`{"amount":"lots"}`)})
	if err != nil {
		t.Fatal(err)
	}
	h.Wait()
	calls = bustest.Handled[OrderCreated](h)
	var de *bus.DecodeError
	if len(calls) != 1 || !errors.As(calls[0].Err, &de) || calls[0].ID != "raw-1" {
		t.Fatalf("calls %+v", calls)
	}
	if f := h.Failures(); len(f) == 0 || !strings.Contains(f[0].Error(), `group "billing"`) {
		t.Errorf("failures %v", f)
	}
}

func TestWaitIdleRespectsContext(t *testing.T) {
	h := bustest.New(t)
	block := make(chan struct{})
	must(t, subscribe(h.Bus(), "slow", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		<-block
		return nil
	}))
	if err := bus.Publish(t.Context(), h.Bus(), OrderCreated{ID: "1", Amount: 1}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := h.WaitIdle(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitIdle on a cancelled context: %v", err)
	}
	close(block)
	h.Wait()
}

// A transient error is redelivered until the handler succeeds.
func TestTransientErrorIsRedelivered(t *testing.T) {
	h := bustest.New(t)
	done := make(chan struct{})
	must(t, subscribe(h.Bus(), "flaky", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		if e.Attempt < 3 {
			return errors.New("try again")
		}
		close(done)
		return nil
	}))
	if err := bus.Publish(t.Context(), h.Bus(), OrderCreated{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	<-done
	h.Wait()
	var attempts []int
	for _, c := range bustest.Handled[OrderCreated](h) {
		attempts = append(attempts, c.Attempt)
		if (c.Err == nil) != (c.Attempt == 3) {
			t.Errorf("attempt %d: %v", c.Attempt, c.Err)
		}
	}
	if !slices.Equal(attempts, []int{1, 2, 3}) {
		t.Errorf("attempts %v", attempts)
	}
}

// A batch the transport accepted in part: Published lists the events that
// were accepted, not none of them.
func TestPublishedPartialBatch(t *testing.T) {
	failSecond := func(next transport.Publisher) transport.Publisher {
		return publisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
			if len(msgs) < 2 {
				return next.Publish(ctx, topic, msgs...)
			}
			ok := append([]*transport.Message{msgs[0]}, msgs[2:]...)
			if err := next.Publish(ctx, topic, ok...); err != nil {
				return err
			}
			return &transport.PublishError{Topic: topic, Total: len(msgs),
				Failures: []transport.MessageError{{Index: 1, ID: msgs[1].ID, Err: errors.New("refused")}}}
		})
	}
	h := bustest.New(t, bustest.WithBusOptions(bus.WithPublishMiddleware(failSecond)))
	orders := []OrderCreated{{ID: "1", Amount: 1}, {ID: "2", Amount: 2}, {ID: "3", Amount: 3}}
	var pe *transport.PublishError
	if err := bus.PublishBatch(t.Context(), h.Bus(), orders); !errors.As(err, &pe) {
		t.Fatalf("PublishBatch: %v, want a *transport.PublishError", err)
	}
	var got []string
	for _, e := range bustest.Published[OrderCreated](h) {
		got = append(got, e.Data.ID)
	}
	if !slices.Equal(got, []string{"1", "3"}) {
		t.Errorf("Published: %q, want the accepted [1 3]", got)
	}
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*transport.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	return f(ctx, topic, msgs...)
}

type OrderCancelled struct {
	ID string `json:"id"`
}

type OrderShipped struct {
	ID string `json:"id"`
}

// The library's headline pattern: several event types on one topic, handled
// by one group, subscribed before and between publishes. The group keeps one
// subscription (one order per key), and no event published after a
// Subscribe returned is skipped.
func TestSeveralTypesInOneGroup(t *testing.T) {
	h := bustest.New(t)
	b := h.Bus()
	for _, err := range []error{bus.Register[OrderCreated](b, "orders"), bus.Register[OrderCancelled](b, "orders"), bus.Register[OrderShipped](b, "orders")} {
		must(t, err)
	}
	var mu sync.Mutex
	var seen []string
	note := func(s string) { mu.Lock(); seen = append(seen, s); mu.Unlock() }
	must(t, subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error { note("created " + e.Data.ID); return nil }))
	pub := func(v any) {
		t.Helper()
		var err error
		switch v := v.(type) {
		case OrderCreated:
			err = bus.Publish(t.Context(), b, v, bus.WithKey("o1"))
		case OrderCancelled:
			err = bus.Publish(t.Context(), b, v, bus.WithKey("o1"))
		case OrderShipped:
			err = bus.Publish(t.Context(), b, v, bus.WithKey("o1"))
		}
		must(t, err)
	}
	pub(OrderCreated{ID: "1"})
	pub(OrderCancelled{ID: "1"}) // before its handler: unknown to the group
	must(t, subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCancelled]) error {
		note("cancelled " + e.Data.ID)
		return nil
	}))
	pub(OrderCreated{ID: "2"})
	pub(OrderCancelled{ID: "2"})
	// A third handler with options that change the group's subscription.
	if _, err := bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderShipped]) error { note("shipped " + e.Data.ID); return nil },
		bus.WithConcurrency(4)); err != nil {
		t.Fatal(err)
	}
	pub(OrderShipped{ID: "2"})
	pub(OrderCreated{ID: "3"})
	h.Wait()

	want := []string{"created 1", "created 2", "cancelled 2", "shipped 2", "created 3"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, want) {
		t.Errorf("handled %q, want %q", seen, want)
	}
	if s := h.Stats(); s.Unknown != 1 || s.Handled != 5 || s.Failed != 0 {
		t.Errorf("Stats = %+v, want 1 unknown (the cancel published before its handler), 5 handled", s)
	}
	// A second handler of one type in the group is still an error.
	if _, err := bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error { return nil }); !errors.Is(err, bus.ErrAlreadyRegistered) {
		t.Errorf("second OrderCreated handler in billing: %v, want ErrAlreadyRegistered", err)
	}
}

// Wait waits across a redelivery's backoff: a handler that fails once is
// called again before Wait returns.
func TestWaitAcrossRedelivery(t *testing.T) {
	h := bustest.New(t, bustest.WithTransportOptions(chanbus.WithBackoff(100*time.Millisecond, 100*time.Millisecond)))
	b := h.Bus()
	var calls atomic.Int32
	must(t, subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		if calls.Add(1) == 1 {
			return errors.New("payment service unavailable")
		}
		return billing{b}.OnOrderCreated(ctx, e)
	}))
	must(t, bus.Publish(t.Context(), b, OrderCreated{ID: "42", Amount: 1}))
	h.Wait()
	if n := calls.Load(); n != 2 {
		t.Errorf("handler calls after Wait: %d, want 2 (the failure and its redelivery)", n)
	}
	if got := bustest.Published[InvoiceIssued](h); len(got) != 1 {
		t.Errorf("invoices after Wait: %d, want 1", len(got))
	}
	h.Wait() // idle: returns at once
}

// A dead-letter flow needs no closure trick: WithDeadLetter puts DeadLetter
// in the chain, publishing through the harness, and DeadLetters shows what
// it dead-lettered.
func TestDeadLetters(t *testing.T) {
	h := bustest.New(t, bustest.WithDeadLetter(middleware.DeadLetterOptions{}),
		bustest.WithBusOptions(bus.WithMiddleware(middleware.Retry(middleware.RetryOptions{MaxAttempts: 2, InitialInterval: time.Millisecond}))))
	b := h.Bus()
	must(t, subscribe(b, "billing", billing{b}.OnOrderCreated))
	must(t, subscribe(b, "flaky", func(ctx context.Context, e bus.Event[OrderCreated]) error { return errors.New("always down") }))
	must(t, bus.Publish(t.Context(), b, OrderCreated{ID: "0"}))
	h.Wait()

	dl := h.DeadLetters()
	slices.SortFunc(dl, func(x, y bustest.DeadLetter) int { return strings.Compare(x.Group, y.Group) })
	if len(dl) != 2 {
		t.Fatalf("dead letters: %+v, want 2", dl)
	}
	if d := dl[0]; d.Group != "billing" || d.Topic != "OrderCreated.dlq" || d.FromTopic != "OrderCreated" || !d.Permanent || d.Attempts != 1 || !strings.Contains(d.Err, "order without amount") {
		t.Errorf("billing's dead letter: %+v", d)
	}
	if d := dl[1]; d.Group != "flaky" || d.Permanent || d.Attempts != 2 || !strings.Contains(d.Err, "always down") {
		t.Errorf("flaky's dead letter: %+v", d)
	}
	if got := bustest.Published[OrderCreated](h); len(got) != 1 || got[0].Topic != "OrderCreated" {
		t.Errorf("Published lists dead letters: %+v", got)
	}
	if n := h.Unrouted(); n != 2 {
		t.Errorf("Unrouted = %d, want 2 (nobody subscribes to the dead-letter topic)", n)
	}
	// The harness's publisher, for a DeadLetter of the test's own.
	if h.Publisher() == nil {
		t.Error("Publisher is nil")
	}
}
