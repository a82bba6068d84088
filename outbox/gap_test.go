package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/busway/busway/bus"
)

// TestGapLateCommit: a transaction that got its outbox id first and commits
// last is still delivered (a relay reading "id > last seen" would skip it:
// watermill-sql's issue 311). PostgreSQL only: SQLite has one writer, so a
// transaction cannot hold an id while others commit.
func TestGapLateCommit(t *testing.T) {
	e := needPostgres(t)
	ctx := context.Background()
	b, tr := newBus(t)
	o := e.newOutbox(t, e.db, b)
	s := subscribe(t, b)
	startRelay(t, o, tr, RelayOptions{})

	// The early transaction inserts first (lowest id) and stays open.
	early, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Rollback()
	if err := Publish(ctx, o, early, OrderPlaced{ID: "early"}, bus.WithKey("k-early")); err != nil {
		t.Fatal(err)
	}
	// Later transactions get higher ids and commit first.
	for i := range 10 {
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			return Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint("late-", i)}, bus.WithKey(fmt.Sprint("k", i)))
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the 10 later events", 10*time.Second, func() bool { return s.distinct() == 10 })
	// The relay has published rows with higher ids; now the early one commits.
	if err := o.Commit(early); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the early event, committed last", 10*time.Second, func() bool { return s.distinct() == 11 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID["early"] != 1 {
		t.Fatalf("early event delivered %d times", s.byID["early"])
	}
}

// TestGapManyInterleaved: writers whose commit order differs from their
// id order, many times over: every event delivered once.
func TestGapManyInterleaved(t *testing.T) {
	e := needPostgres(t)
	ctx := context.Background()
	b, tr := newBus(t)
	o := e.newOutbox(t, e.db, b)
	s := subscribe(t, b, bus.WithConcurrency(4))
	startRelay(t, o, tr, RelayOptions{BatchSize: 7})
	const rounds, width = 30, 5
	for r := range rounds {
		txs := make([]*sql.Tx, width)
		for i := range txs {
			tx, err := e.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			txs[i] = tx
			if err := Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprintf("%d-%d", r, i)}); err != nil {
				t.Fatal(err)
			}
		}
		// Commit in reverse id order, waking the relay after each.
		for i := width - 1; i >= 0; i-- {
			if err := o.Commit(txs[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "every event", 30*time.Second, func() bool { return s.distinct() == rounds*width })
	waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
	if n := s.count(); n != rounds*width {
		t.Fatalf("%d deliveries of %d events: duplicates without a crash", n, rounds*width)
	}
}

// TestStallUnrelatedTransaction: a transaction held open for seconds (one
// that wrote elsewhere, and one that wrote an outbox row) does not delay
// events committed meanwhile: they are delivered while it is still open.
// (watermill-sql v4's default waits on every open transaction.)
func TestStallUnrelatedTransaction(t *testing.T) {
	e := needPostgres(t)
	ctx := context.Background()
	b, tr := newBus(t)
	o := e.newOutbox(t, e.db, b)
	e.createOrders(t)
	s := subscribe(t, b)
	startRelay(t, o, tr, RelayOptions{})

	unrelated, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unrelated.Rollback()
	if _, err := unrelated.ExecContext(ctx, "INSERT INTO "+e.tbl("orders")+" (id) VALUES ('held')"); err != nil {
		t.Fatal(err)
	}
	pendingRow, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pendingRow.Rollback()
	if err := Publish(ctx, o, pendingRow, OrderPlaced{ID: "held"}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			return Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(i)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Both transactions stay open until all 20 arrived (or the deadline).
	waitFor(t, "20 events while two transactions are held open", 10*time.Second, func() bool { return s.distinct() == 20 })
	var open int
	if err := unrelated.QueryRowContext(ctx, "SELECT 1").Scan(&open); err != nil {
		t.Fatalf("the held transaction ended early: %v", err)
	}
	if err := o.Commit(pendingRow); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the held event after its commit", 10*time.Second, func() bool { return s.distinct() == 21 })
}
