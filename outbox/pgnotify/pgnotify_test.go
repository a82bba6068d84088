package pgnotify_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/outbox"
	"github.com/busway/busway/outbox/pgnotify"
	"github.com/busway/busway/transport/chanbus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type Ping struct{ N int }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestWakeNotify: a writer process without a relay wakes the relay of
// another process through a NOTIFY that the relay's Listener receives. The
// relay polls once an hour, so delivery within the deadline proves it.
func TestWakeNotify(t *testing.T) {
	dsn := os.Getenv("BUS_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Skip("BUS_TEST_POSTGRES_DSN unset: needs PostgreSQL")
	}
	ctx := context.Background()
	open := func() *sql.DB {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	writerDB, relayDB := open(), open()
	schema := fmt.Sprintf("pgnotify_test_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9)
	if _, err := writerDB.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { writerDB.Exec("DROP SCHEMA " + schema + " CASCADE") })

	tr := chanbus.New()
	b := bus.New(tr, bus.WithSource("test"))
	defer b.Shutdown(ctx)
	var got atomic.Int32
	if _, err := bus.Subscribe(b, "g", func(context.Context, bus.Event[Ping]) error { got.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	opts := outbox.Options{Dialect: outbox.PostgreSQL, Table: schema + ".busway_outbox", InboxTable: schema + ".busway_inbox"}
	wopts := opts
	wopts.Bus = b
	writer, err := outbox.New(writerDB, wopts)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	if err := writer.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	ro, err := outbox.New(relayDB, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := outbox.NewRelay(ro, tr, outbox.RelayOptions{PollInterval: time.Hour, Listener: pgnotify.New(relayDB)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Stop(ctx)
	waitFor(t, "the relay to lead", func() bool { return r.Stats().Leader })
	// The listener wakes the relay once when LISTEN took effect; after that
	// round, new rows need a NOTIFY.
	waitFor(t, "the first rounds", func() bool { return r.Stats().Rounds >= 2 })
	for i := range 5 {
		if err := writer.Transact(ctx, func(tx *sql.Tx) error { return outbox.Publish(ctx, writer, tx, Ping{i}) }); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("event %d, woken by NOTIFY", i), func() bool { return got.Load() == int32(i+1) })
	}
}

// TestNotPgx: a database of another driver is a clear error.
func TestNotPgx(t *testing.T) {
	db, err := sql.Open("sqlite", t.TempDir()+"/x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = pgnotify.New(db).Listen(context.Background(), "c", func() {})
	if err == nil || !errors.Is(err, pgnotify.ErrNotPgx) {
		t.Fatalf("Listen on SQLite: %v, want ErrNotPgx", err)
	}
}
