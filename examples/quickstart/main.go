// Command quickstart shows busway's typed API: an order service publishes
// OrderCreated events; billing, shipping and a notifier handle them in
// their own groups and publish follow-up events. A payment that fails once
// is delivered again. It runs in process on Go channels ("chan://"); the
// transport comes from BUS_URL, so the same program can run on a broker.
//
//	go run ./examples/quickstart
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/busway/busway"
	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

// The events. All three share the topic "orders", keyed by order ID, so
// that every group sees the events of one order in the order they happened.
type (
	OrderCreated struct {
		Order    string `json:"order"`
		Customer string `json:"customer"`
		Cents    int    `json:"cents"`
	}
	InvoiceIssued struct {
		Order   string `json:"order"`
		Invoice string `json:"invoice"`
		Cents   int    `json:"cents"`
	}
	OrderShipped struct {
		Order  string `json:"order"`
		Parcel string `json:"parcel"`
	}
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, os.Stdout, os.Getenv("BUS_URL")); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// openTransport opens the transport BUS_URL names: "chan://" by default,
// "nats://embedded?store_dir=/tmp/qs" for a durable single binary,
// "nats://host:4222" or "kafka://host:9092" for a broker.
func openTransport(ctx context.Context, url string) (transport.Transport, error) {
	return busway.Open(ctx, url)
}

func run(ctx context.Context, out io.Writer, url string) error {
	t, err := openTransport(ctx, url)
	if err != nil {
		return err
	}
	b := bus.New(t, bus.WithSource("quickstart"))
	for _, err := range []error{
		bus.Register[OrderCreated](b, "orders"),
		bus.Register[InvoiceIssued](b, "orders"),
		bus.Register[OrderShipped](b, "orders"),
	} {
		if err != nil {
			return errors.Join(err, b.Shutdown(ctx))
		}
	}

	lg := &actionLog{}
	shipped := make(chan string) // order IDs the notifier mailed about
	payments := map[string]int{} // failed payment attempts per order (billing's state)
	var paymentsMu sync.Mutex

	subs := []error{
		subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
			paymentsMu.Lock()
			defer paymentsMu.Unlock()
			if e.Data.Customer == "bob" && payments[e.Data.Order] == 0 {
				payments[e.Data.Order]++
				lg.add("billing", 1, "payment for order %s declined (attempt %d): will be delivered again", e.Data.Order, e.Attempt)
				return errors.New("payment provider timeout")
			}
			inv := InvoiceIssued{Order: e.Data.Order, Invoice: "INV-" + e.Data.Order, Cents: e.Data.Cents}
			lg.add("billing", 1, "invoice %s issued for %s (attempt %d)", inv.Invoice, money(inv.Cents), e.Attempt)
			return bus.Publish(ctx, b, inv, bus.WithKey(e.Key))
		}),
		subscribe(b, "shipping", func(ctx context.Context, e bus.Event[OrderCreated]) error {
			lg.add("shipping", 1, "parcel for order %s packed, waiting for the invoice", e.Data.Order)
			return nil
		}),
		subscribe(b, "shipping", func(ctx context.Context, e bus.Event[InvoiceIssued]) error {
			s := OrderShipped{Order: e.Data.Order, Parcel: "PCL-" + e.Data.Order}
			lg.add("shipping", 2, "invoice %s seen: parcel %s shipped", e.Data.Invoice, s.Parcel)
			return bus.Publish(ctx, b, s, bus.WithKey(e.Key))
		}),
		subscribe(b, "notifier", func(ctx context.Context, e bus.Event[InvoiceIssued]) error {
			lg.add("notifier", 2, "mail: your invoice %s over %s", e.Data.Invoice, money(e.Data.Cents))
			return nil
		}),
		subscribe(b, "notifier", func(ctx context.Context, e bus.Event[OrderShipped]) error {
			lg.add("notifier", 3, "mail: order %s is on its way (%s)", e.Data.Order, e.Data.Parcel)
			select {
			case shipped <- e.Data.Order:
			case <-ctx.Done():
			}
			return nil
		}),
	}
	if err := errors.Join(subs...); err != nil {
		return errors.Join(err, b.Shutdown(ctx))
	}
	if err := b.Start(ctx); err != nil {
		return errors.Join(err, b.Shutdown(ctx))
	}
	fmt.Fprintf(out, "busway quickstart on %s\n", cmp.Or(url, "chan://"))

	orders := []OrderCreated{
		{Order: "1001", Customer: "alice", Cents: 4250},
		{Order: "1002", Customer: "bob", Cents: 1999},
		{Order: "1003", Customer: "carol", Cents: 12000},
	}
	for _, o := range orders {
		fmt.Fprintf(out, "\norder %s placed by %s: %s\n", o.Order, o.Customer, money(o.Cents))
		if err := bus.Publish(ctx, b, o, bus.WithKey(o.Order), bus.WithSubject("orders/"+o.Order)); err != nil {
			return errors.Join(err, b.Shutdown(ctx))
		}
		// Wait for the last step of the order, then print what each group
		// did, group by group (the groups run in parallel).
		select {
		case <-shipped:
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("order %s: %w", o.Order, ctx.Err()), b.Shutdown(context.Background()))
		}
		if err := waitIdle(ctx, t); err != nil {
			return errors.Join(err, b.Shutdown(context.Background()))
		}
		lg.flush(out, "billing", "shipping", "notifier")
	}

	if err := b.Shutdown(ctx); err != nil {
		return err
	}
	s := b.Stats()
	fmt.Fprintf(out, "\nshut down: %d events published, %d handled, %d failed and delivered again, %d ignored by groups without a handler for their type\n",
		s.Published, s.Handled, s.Failed, s.Unknown)
	return nil
}

// waitIdle lets the groups finish what they have (events of types they
// ignore included), where the transport can tell: chanbus can.
func waitIdle(ctx context.Context, t transport.Transport) error {
	if w, ok := t.(interface{ WaitIdle(context.Context) error }); ok {
		return w.WaitIdle(ctx)
	}
	return nil
}

func subscribe[T any](b *bus.Bus, group string, fn func(context.Context, bus.Event[T]) error) error {
	_, err := bus.Subscribe(b, group, fn)
	return err
}

func money(cents int) string { return fmt.Sprintf("%d.%02d EUR", cents/100, cents%100) }

// actionLog collects what the handlers did, per group. Each line has the
// step of the order it belongs to (1 OrderCreated, 2 InvoiceIssued, 3
// OrderShipped): a group handles the events of one key in the order they
// were published, but events published concurrently by two other groups
// (or by a group while the original is still being queued for the others)
// have no order between them, so lines are printed by step.
type actionLog struct {
	mu    sync.Mutex
	lines map[string][]step
}

type step struct {
	n    int
	line string
}

func (l *actionLog) add(group string, n int, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lines == nil {
		l.lines = map[string][]step{}
	}
	l.lines[group] = append(l.lines[group], step{n, fmt.Sprintf(format, args...)})
}

// flush prints the lines of the given groups in that order, each group's
// by step, and forgets them.
func (l *actionLog) flush(out io.Writer, groups ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range groups {
		steps := l.lines[g]
		slices.SortStableFunc(steps, func(a, b step) int { return cmp.Compare(a.n, b.n) })
		for _, s := range steps {
			fmt.Fprintf(out, "  %-9s %s\n", g+":", s.line)
		}
	}
	l.lines = nil
}
