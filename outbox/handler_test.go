package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport/chanbus"
)

// Invoiced is the follow-up event a handler publishes into its inbox
// transaction.
type Invoiced struct {
	OrderID string `json:"order_id"`
}

// TestHandlerPanicRollsBack: a handler that panics inside its inbox
// transaction leaves no transaction open: its writes and its inbox record
// are rolled back, so the redelivery runs it again, takes the database's
// write lock (SQLite) and the inbox row (PostgreSQL), and commits.
func TestHandlerPanicRollsBack(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, _ := newBus(t)
		o := e.newOutbox(t, e.db, b)
		if _, err := e.db.Exec("CREATE TABLE " + e.tbl("invoices") + " (order_id TEXT NOT NULL)"); err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int32
		_, err := bus.Subscribe(b, "billing", Handler(o, func(ctx context.Context, tx *sql.Tx, ev bus.Event[OrderPlaced]) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.tbl("invoices")+" (order_id) VALUES ("+e.ph(1)+")", ev.Data.ID); err != nil {
				return err
			}
			if calls.Add(1) == 1 {
				panic("the first call panics after its write")
			}
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctx, b, OrderPlaced{ID: "42"}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the redelivery to commit its invoice", 20*time.Second, func() bool {
			return calls.Load() >= 2 && e.count(t, e.tbl("invoices")) == 1
		})
		if n := e.count(t, e.inbox); n != 1 {
			t.Fatalf("%d inbox rows, want 1", n)
		}
	})
}

// TestHandlerPublishWakesRelay: an event a Handler publishes into its
// transaction is relayed when that transaction commits, not at the relay's
// next poll (an hour here).
func TestHandlerPublishWakesRelay(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		if err := bus.Register[Invoiced](b, "invoices"); err != nil {
			t.Fatal(err)
		}
		o := e.newOutbox(t, e.db, b)
		_, err := bus.Subscribe(b, "billing", Handler(o, func(ctx context.Context, tx *sql.Tx, ev bus.Event[OrderPlaced]) error {
			return Publish(ctx, o, tx, Invoiced{OrderID: ev.Data.ID})
		}))
		if err != nil {
			t.Fatal(err)
		}
		var got atomic.Value
		_, err = bus.Subscribe(b, "audit", func(_ context.Context, ev bus.Event[Invoiced]) error {
			got.Store(ev.Data.OrderID)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		startRelay(t, o, tr, RelayOptions{PollInterval: noPoll, LeaseTTL: 2 * noPoll})
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			return Publish(ctx, o, tx, OrderPlaced{ID: "42"})
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the handler's Invoiced", 10*time.Second, func() bool { return got.Load() == "42" })
	})
}

// TestHandlerPublishesHoldingTheOnlyConnection: a Handler that publishes
// to chanbus, with one key, more follow-ups than a queue holds while its
// transaction holds the pool's only connection (db.SetMaxOpenConns(1), as
// SQLite is often run), to a group whose own Handler waits for that
// connection (and to one whose Idempotent middleware does): nothing
// deadlocks, every follow-up is handled.
func TestHandlerPublishesHoldingTheOnlyConnection(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		tr := chanbus.New(chanbus.WithBuffer(4))
		b := bus.New(tr)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			b.Shutdown(ctx)
		})
		for _, err := range []error{bus.Register[OrderPlaced](b, "orders"), bus.Register[Invoiced](b, "invoices")} {
			if err != nil {
				t.Fatal(err)
			}
		}
		db := e.openDB(t)
		db.SetMaxOpenConns(1)
		o := e.newOutbox(t, db, b)
		const followUps = 50
		_, err := bus.Subscribe(b, "billing", Handler(o, func(ctx context.Context, _ *sql.Tx, ev bus.Event[OrderPlaced]) error {
			for i := range followUps {
				if err := bus.Publish(ctx, b, Invoiced{OrderID: fmt.Sprint(i)}, bus.WithKey("k")); err != nil {
					return err
				}
			}
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		var handled, marked atomic.Int32
		_, err = bus.Subscribe(b, "audit", Handler(o, func(context.Context, *sql.Tx, bus.Event[Invoiced]) error {
			handled.Add(1)
			return nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		// A group whose Idempotent middleware looks up and marks each
		// event in the same database waits for the connection too.
		_, err = bus.Subscribe(b, "ledger", func(context.Context, bus.Event[Invoiced]) error {
			marked.Add(1)
			return nil
		}, bus.WithGroupMiddleware(middleware.Idempotent(o.Inbox(), middleware.IdempotentOptions{})))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctx, b, OrderPlaced{ID: "42"}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "every follow-up, in both groups", 20*time.Second, func() bool { return handled.Load() == followUps && marked.Load() == followUps })
	})
}
