package bustest_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/bustest"
	"github.com/busway/busway/transport"
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
