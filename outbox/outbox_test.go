package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

// TestPublishCommitRollback: a committed event is delivered with the
// envelope bus.Publish would send; a rolled-back one never is.
func TestPublishCommitRollback(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		e.createOrders(t)
		s := subscribe(t, b)
		startRelay(t, o, tr, RelayOptions{})

		errRollback := errors.New("rollback")
		err := o.Transact(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.tbl("orders")+" (id) VALUES ("+e.ph(1)+")", "rolled-back"); err != nil {
				return err
			}
			if err := Publish(ctx, o, tx, OrderPlaced{ID: "rolled-back"}, bus.WithKey("k")); err != nil {
				return err
			}
			return errRollback
		})
		if !errors.Is(err, errRollback) {
			t.Fatal(err)
		}
		err = o.Transact(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.tbl("orders")+" (id) VALUES ("+e.ph(1)+")", "42"); err != nil {
				return err
			}
			return Publish(ctx, o, tx, OrderPlaced{ID: "42"}, bus.WithKey("k"), bus.WithSubject("order/42"), bus.WithHeader("tenant", "acme"))
		})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the committed event", 10*time.Second, func() bool { return s.count() >= 1 })
		waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
		got := s.events()
		if len(got) != 1 || got[0].Data.ID != "42" {
			t.Fatalf("delivered %+v, want only order 42 (the rolled-back one must not be delivered)", got)
		}
		ev := got[0]
		if ev.Type != "OrderPlaced" || ev.Source != "orders-svc" || ev.Key != "k" || ev.Subject != "order/42" ||
			ev.Header["tenant"] != "acme" || ev.ID == "" || ev.Time.IsZero() {
			t.Fatalf("envelope %+v", ev)
		}
		if ev.Header[transport.HeaderContentType] != "application/json" {
			t.Fatalf("content-type %q", ev.Header[transport.HeaderContentType])
		}
		if n := e.count(t, e.tbl("orders")); n != 1 {
			t.Fatalf("%d orders, want 1", n)
		}
	})
}

// TestAtomicityConcurrentWriters: 20 writers, some of whose transactions
// roll back: the delivered events are exactly the committed business rows.
func TestAtomicityConcurrentWriters(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		e.createOrders(t)
		s := subscribe(t, b, bus.WithConcurrency(8))
		startRelay(t, o, tr, RelayOptions{})
		const writers, each = 20, 25
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					id := fmt.Sprintf("w%d-%d", w, i)
					err := o.Transact(ctx, func(tx *sql.Tx) error {
						if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.tbl("orders")+" (id) VALUES ("+e.ph(1)+")", id); err != nil {
							return err
						}
						if err := Publish(ctx, o, tx, OrderPlaced{ID: id}, bus.WithKey(strconv.Itoa(w))); err != nil {
							return err
						}
						if i%3 == 0 {
							return errRolledBack
						}
						return nil
					})
					if err != nil && !errors.Is(err, errRolledBack) {
						errs <- fmt.Errorf("writer %d: %w", w, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		var committed []string
		rows, err := e.db.Query("SELECT id FROM " + e.tbl("orders"))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id string
			rows.Scan(&id)
			committed = append(committed, id)
		}
		rows.Close()
		want := writers * (each - (each+2)/3)
		if len(committed) != want {
			t.Fatalf("%d committed orders, want %d", len(committed), want)
		}
		waitFor(t, "every committed event", 30*time.Second, func() bool { return s.distinct() >= want })
		waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, id := range committed {
			if s.byID[id] != 1 {
				t.Errorf("order %s: delivered %d times, want 1", id, s.byID[id])
			}
		}
		if len(s.byID) != want {
			t.Errorf("%d distinct events delivered, want %d (a rolled-back event was delivered)", len(s.byID), want)
		}
	})
}

var errRolledBack = errors.New("rolled back on purpose")
