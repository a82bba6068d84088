package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// storeCases returns the stores to test: memory and SQLite always,
// PostgreSQL when BUS_TEST_POSTGRES_DSN is set. Each is fresh.
func storeCases(t *testing.T) map[string]func(t *testing.T) middleware.Store {
	cases := map[string]func(t *testing.T) middleware.Store{
		"memory": func(t *testing.T) middleware.Store { return middleware.NewMemoryStore(middleware.MemoryStoreOptions{}) },
		"sqlite": func(t *testing.T) middleware.Store { return newSQLiteStore(t) },
	}
	if dsn := os.Getenv("BUS_TEST_POSTGRES_DSN"); dsn != "" {
		cases["postgres"] = func(t *testing.T) middleware.Store { return newPostgresStore(t, dsn) }
	} else {
		t.Log("BUS_TEST_POSTGRES_DSN unset: PostgreSQL store not tested")
	}
	return cases
}

func newSQLiteStore(t testing.TB) *middleware.SQLStore {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "inbox.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := middleware.NewSQLStore(db, middleware.SQLStoreOptions{Dialect: middleware.SQLite})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	return s
}

var pgTableSeq atomic.Int64

func newPostgresStore(t testing.TB, dsn string) *middleware.SQLStore {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	table := fmt.Sprintf("busway_inbox_test_%d_%d", os.Getpid(), pgTableSeq.Add(1))
	t.Cleanup(func() {
		if _, err := db.Exec("DROP TABLE IF EXISTS " + table); err != nil {
			t.Errorf("drop %s: %v", table, err)
		}
		db.Close()
	})
	s, err := middleware.NewSQLStore(db, middleware.SQLStoreOptions{Dialect: middleware.PostgreSQL, Table: table})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	return s
}

func TestStores(t *testing.T) {
	for name, mk := range storeCases(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := mk(t)
			if seen, err := s.Seen(ctx, "g1", "id1"); err != nil || seen {
				t.Fatalf("fresh store: seen %v err %v", seen, err)
			}
			if err := s.Mark(ctx, "g1", "id1"); err != nil {
				t.Fatal(err)
			}
			if err := s.Mark(ctx, "g1", "id1"); err != nil {
				t.Fatalf("second Mark: %v", err)
			}
			if seen, err := s.Seen(ctx, "g1", "id1"); err != nil || !seen {
				t.Fatalf("after Mark: seen %v err %v", seen, err)
			}
			// The group is part of the key.
			if seen, err := s.Seen(ctx, "g2", "id1"); err != nil || seen {
				t.Fatalf("other group: seen %v err %v", seen, err)
			}
		})
	}
}

func TestIdempotent(t *testing.T) {
	for name, mk := range storeCases(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := mk(t)
			var calls atomic.Int32
			fail := true
			h := middleware.Idempotent(s, middleware.IdempotentOptions{})(func(context.Context, *transport.Message) error {
				calls.Add(1)
				if fail {
					return errBoom
				}
				return nil
			})
			// A failure is not marked: the redelivery runs the handler.
			if err := h(ctx, msg("m1")); !errors.Is(err, errBoom) {
				t.Fatal(err)
			}
			fail = false
			if err := h(ctx, msg("m1")); err != nil {
				t.Fatal(err)
			}
			// A redelivered duplicate is skipped and acked.
			if err := h(ctx, msg("m1")); err != nil {
				t.Fatal(err)
			}
			if calls.Load() != 2 {
				t.Fatalf("handler ran %d times, want 2", calls.Load())
			}
			// Another group handles the same ID.
			other := msg("m1")
			other.Group = "shipping"
			if err := h(ctx, other); err != nil || calls.Load() != 3 {
				t.Fatalf("other group: err %v calls %d", err, calls.Load())
			}
			// No ID: always handled.
			if err := h(ctx, msg("")); err != nil || calls.Load() != 4 {
				t.Fatal("message without ID")
			}
			if err := h(ctx, msg("")); err != nil || calls.Load() != 5 {
				t.Fatal("message without ID")
			}
		})
	}
}

type brokenStore struct{ seenErr, markErr error }

func (b brokenStore) Seen(context.Context, string, string) (bool, error) { return false, b.seenErr }
func (b brokenStore) Mark(context.Context, string, string) error         { return b.markErr }

func TestIdempotentStoreErrors(t *testing.T) {
	ctx := context.Background()
	var calls int
	h := middleware.Idempotent(brokenStore{seenErr: errBoom}, middleware.IdempotentOptions{})(
		func(context.Context, *transport.Message) error { calls++; return nil })
	if err := h(ctx, msg("m1")); !errors.Is(err, errBoom) || calls != 0 {
		t.Fatalf("lookup failure: err %v calls %d", err, calls)
	}
	var markErr error
	h = middleware.Idempotent(brokenStore{markErr: errBoom}, middleware.IdempotentOptions{
		OnMarkError: func(_ context.Context, _ *transport.Message, err error) { markErr = err },
	})(ok)
	if err := h(ctx, msg("m1")); err != nil || !errors.Is(markErr, errBoom) {
		t.Fatalf("mark failure: err %v, reported %v", err, markErr)
	}
	if err := middleware.Idempotent(nil, middleware.IdempotentOptions{})(ok)(ctx, msg("m1")); !errors.Is(err, transport.ErrInvalidOptions) {
		t.Fatalf("nil store: %v", err)
	}
}

func TestMemoryStoreBounds(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	s := middleware.NewMemoryStore(middleware.MemoryStoreOptions{MaxEntries: 3, TTL: time.Minute, Now: func() time.Time { return now }})
	for i := 0; i < 3; i++ {
		_ = s.Mark(ctx, "g", fmt.Sprint(i))
	}
	// Touch 0 so 1 is least recently used, then add a fourth.
	if seen, _ := s.Seen(ctx, "g", "0"); !seen {
		t.Fatal("0 not seen")
	}
	_ = s.Mark(ctx, "g", "3")
	if s.Len() != 3 {
		t.Fatalf("len %d, want 3", s.Len())
	}
	if seen, _ := s.Seen(ctx, "g", "1"); seen {
		t.Fatal("least recently used entry kept beyond MaxEntries")
	}
	for _, id := range []string{"0", "2", "3"} {
		if seen, _ := s.Seen(ctx, "g", id); !seen {
			t.Fatalf("%s forgotten", id)
		}
	}
	now = now.Add(time.Minute)
	if seen, _ := s.Seen(ctx, "g", "3"); seen {
		t.Fatal("entry kept beyond TTL")
	}
	_ = s.Mark(ctx, "g", "4") // drops expired entries
	if s.Len() != 1 {
		t.Fatalf("len %d after expiry, want 1", s.Len())
	}
}

func TestSQLStoreOptions(t *testing.T) {
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, o := range []middleware.SQLStoreOptions{
		{},
		{Dialect: middleware.SQLite, Table: "bad table"},
		{Dialect: middleware.SQLite, Table: "x; DROP TABLE y"},
		{Dialect: middleware.SQLite, Table: "1abc"},
		{Dialect: middleware.SQLite, Table: "a.b.c"},
	} {
		if _, err := middleware.NewSQLStore(db, o); !errors.Is(err, transport.ErrInvalidOptions) {
			t.Errorf("%+v: err %v, want ErrInvalidOptions", o, err)
		}
	}
	if _, err := middleware.NewSQLStore(nil, middleware.SQLStoreOptions{Dialect: middleware.SQLite}); !errors.Is(err, transport.ErrInvalidOptions) {
		t.Errorf("nil db: %v", err)
	}
	s, err := middleware.NewSQLStore(db, middleware.SQLStoreOptions{Dialect: middleware.SQLite, Table: "inbox_2"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	_ = s.Mark(ctx, "g", "old")
	n, err := s.Prune(ctx, time.Now().Add(time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("Prune: %d, %v", n, err)
	}
	if seen, _ := s.Seen(ctx, "g", "old"); seen {
		t.Fatal("pruned marker still seen")
	}
}

// TestIdempotentEventID: the event identity is ce_id, not Message.ID: a
// replayed dead letter (same ce_id, new Message.ID) is a duplicate for a
// group that handled the event, and a new event for one that did not.
func TestIdempotentEventID(t *testing.T) {
	var calls atomic.Int32
	h := middleware.Idempotent(middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.IdempotentOptions{})(
		func(context.Context, *transport.Message) error { calls.Add(1); return nil })
	msg := func(msgID, group string) *transport.Message {
		return &transport.Message{ID: msgID, Group: group, Header: map[string]string{transport.HeaderID: "event-1"}}
	}
	for _, m := range []*transport.Message{msg("publish-1", "billing"), msg("replay-1", "billing"), msg("replay-1", "shipping")} {
		if err := h(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2 (billing once for event-1 whatever its Message.ID, shipping once)", n)
	}
}
