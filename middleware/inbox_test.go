package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// TestIdempotentKeysOnEventID: the event identity is ce_id; a re-publish of
// the same event under a new Message.ID (a replay, the same event on a
// second topic) is a duplicate, and a message without ce_id falls back to
// Message.ID.
func TestIdempotentKeysOnEventID(t *testing.T) {
	ctx := context.Background()
	var calls atomic.Int32
	h := middleware.Idempotent(middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.IdempotentOptions{})(
		func(context.Context, *transport.Message) error { calls.Add(1); return nil })
	first := msg("publish-1")
	first.Header[transport.HeaderID] = "event-1"
	again := msg("publish-2") // a new Message.ID, the same event
	again.Header[transport.HeaderID] = "event-1"
	for _, m := range []*transport.Message{first, again} {
		if err := h(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("the same ce_id under two Message.IDs ran the handler %d times, want 1", calls.Load())
	}
	// Without ce_id, Message.ID is the identity.
	for range 2 {
		if err := h(ctx, msg("plain")); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 2 {
		t.Fatalf("Message.ID fallback: handler ran %d times, want 2", calls.Load())
	}
	if got := middleware.EventID(first); got != "event-1" {
		t.Fatalf("EventID = %q, want event-1", got)
	}
}

func sqlStoreCases(t *testing.T) map[string]func(t *testing.T) *middleware.SQLStore {
	cases := map[string]func(t *testing.T) *middleware.SQLStore{
		"sqlite": func(t *testing.T) *middleware.SQLStore { return newSQLiteStore(t) },
	}
	if dsn := os.Getenv("BUS_TEST_POSTGRES_DSN"); dsn != "" {
		cases["postgres"] = func(t *testing.T) *middleware.SQLStore { return newPostgresStore(t, dsn) }
	}
	return cases
}

// TestTransactionalInbox: the handler's writes and the marker commit
// together; a failure leaves neither; a redelivery of a handled event is
// acked without running the handler.
func TestTransactionalInbox(t *testing.T) {
	for name, mk := range sqlStoreCases(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := mk(t)
			db := s.DB()
			effects := s.Table() + "_effects"
			if _, err := db.Exec("CREATE TABLE " + effects + " (id TEXT NOT NULL)"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Exec("DROP TABLE " + effects) })
			ph := "?"
			if s.Dialect() == middleware.PostgreSQL {
				ph = "$1"
			}
			var calls atomic.Int32
			fail := errBoom
			h := s.Transactional()(func(ctx context.Context, m *transport.Message) error {
				calls.Add(1)
				tx := middleware.TxFromContext(ctx)
				if tx == nil {
					return errors.New("no transaction in ctx")
				}
				if _, err := tx.ExecContext(ctx, "INSERT INTO "+effects+" (id) VALUES ("+ph+")", m.ID); err != nil {
					return err
				}
				return fail
			})
			count := func() int {
				var n int
				if err := db.QueryRow("SELECT count(*) FROM " + effects).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			m := msg("m1")
			if err := h(ctx, m); !errors.Is(err, errBoom) {
				t.Fatalf("failing handler: %v", err)
			}
			if n := count(); n != 0 {
				t.Fatalf("a failed handler left %d effects, want 0 (rolled back)", n)
			}
			if seen, _ := s.Seen(ctx, m.Group, "m1"); seen {
				t.Fatal("a failed handler was recorded as handled")
			}
			fail = nil
			for range 3 {
				if err := h(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
			if n, c := count(), calls.Load(); n != 1 || c != 2 {
				t.Fatalf("after 1 failure and 3 deliveries: %d effects, %d calls; want 1 and 2", n, c)
			}
			// A panic after the write rolls back as an error does, and
			// leaves no transaction holding a lock or the marker's row:
			// the redelivery commits.
			panicky := middleware.Recover()(s.Transactional()(func(ctx context.Context, m *transport.Message) error {
				if _, err := middleware.TxFromContext(ctx).ExecContext(ctx, "INSERT INTO "+effects+" (id) VALUES ("+ph+")", m.ID); err != nil {
					return err
				}
				panic("after the write")
			}))
			var pe *middleware.PanicError
			if err := panicky(ctx, msg("m2")); !errors.As(err, &pe) {
				t.Fatalf("panicking handler: %v, want a PanicError", err)
			}
			if n := count(); n != 1 {
				t.Fatalf("a panicking handler left %d effects, want the 1 from before", n)
			}
			redelivery, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := h(redelivery, msg("m2")); err != nil {
				t.Fatalf("the redelivery after a panic: %v", err)
			}
			if n := count(); n != 2 {
				t.Fatalf("after the redelivery %d effects, want 2", n)
			}
			// No ID at all: an error, not a silent double effect.
			if err := h(ctx, &transport.Message{Group: "g"}); !errors.Is(err, transport.ErrInvalidMessage) {
				t.Fatalf("message without ID: %v", err)
			}
		})
	}
}

// TestSQLStoreNotMigrated: a missing table is an error saying to migrate.
func TestSQLStoreNotMigrated(t *testing.T) {
	db, err := sql.Open("sqlite", t.TempDir()+"/x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := middleware.NewSQLStore(db, middleware.SQLStoreOptions{Dialect: middleware.SQLite})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Seen(context.Background(), "g", "id")
	if !errors.Is(err, middleware.ErrNotMigrated) {
		t.Fatalf("Seen on a missing table: %v, want ErrNotMigrated", err)
	}
	_, err = s.HandleTx(context.Background(), "g", "id", func(*sql.Tx) error { return nil })
	if !errors.Is(err, middleware.ErrNotMigrated) {
		t.Fatalf("HandleTx on a missing table: %v, want ErrNotMigrated", err)
	}
	t.Log(err)
}
