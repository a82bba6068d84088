package outbox

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

// TestBadInput: missing tables, a finished transaction, a closed database
// and bad arguments give clear errors and lose nothing.
func TestBadInput(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o, err := New(e.db, Options{Dialect: e.dialect, Bus: b, Table: e.table, InboxTable: e.inbox})
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()

		// Not migrated: Publish and Relay.Start say to run Migrate.
		err = o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: "1"}) })
		if !errors.Is(err, ErrNotMigrated) {
			t.Fatalf("Publish before Migrate: %v, want ErrNotMigrated", err)
		}
		t.Log(err)
		r, err := NewRelay(o, tr, RelayOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(ctx); !errors.Is(err, ErrNotMigrated) {
			t.Fatalf("Relay.Start before Migrate: %v, want ErrNotMigrated", err)
		}
		_, err = o.Inbox().HandleTx(ctx, "g", "id", func(*sql.Tx) error { return nil })
		if !errors.Is(err, ErrNotMigrated) {
			t.Fatalf("inbox before Migrate: %v, want ErrNotMigrated", err)
		}
		if err := o.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		if err := o.Migrate(ctx); err != nil {
			t.Fatalf("second Migrate: %v", err)
		}

		// A finished transaction.
		tx, err := e.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := Publish(ctx, o, tx, OrderPlaced{ID: "2"}); !errors.Is(err, ErrTxDone) {
			t.Fatalf("Publish in a committed tx: %v, want ErrTxDone", err)
		}
		if err := o.Commit(tx); !errors.Is(err, ErrTxDone) {
			t.Fatalf("Commit of a committed tx: %v", err)
		}

		// Bad arguments.
		if err := Publish(ctx, o, nil, OrderPlaced{}); !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("nil tx: %v", err)
		}
		if err := Publish[OrderPlaced](ctx, nil, nil, OrderPlaced{}); !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("nil outbox: %v", err)
		}
		noBus, err := New(e.db, Options{Dialect: e.dialect, Table: e.table})
		if err != nil {
			t.Fatal(err)
		}
		err = noBus.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, noBus, tx, OrderPlaced{}) })
		if !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("no Bus: %v", err)
		}
		err = o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{}, bus.WithHeader("ce_id", "x")) })
		if !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("bad publish option: %v", err)
		}
		err = o.Transact(ctx, func(tx *sql.Tx) error { return o.PublishMessage(ctx, tx, "orders", &transport.Message{}) })
		if !errors.Is(err, transport.ErrInvalidMessage) {
			t.Fatalf("message without ID: %v", err)
		}
		err = o.Transact(ctx, func(tx *sql.Tx) error { return o.PublishMessage(ctx, tx, "bad topic", &transport.Message{ID: "x"}) })
		if !errors.Is(err, transport.ErrInvalidTopic) {
			t.Fatalf("bad topic: %v", err)
		}
		for _, tc := range []struct {
			opts Options
			name string // what the error must name
		}{
			{Options{}, "Options.Dialect"},
			{Options{Dialect: e.dialect, Table: "x; DROP TABLE y"}, "x; DROP TABLE y"},
			{Options{Dialect: e.dialect, InboxTable: "1x"}, "1x"},
			{Options{Dialect: e.dialect, Table: "events", InboxTable: "events"}, `InboxTable "events"`},
			{Options{Dialect: e.dialect, Table: "events", InboxTable: "Events_Dead"}, `InboxTable "Events_Dead"`},
		} {
			if _, err := New(e.db, tc.opts); !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.name) {
				t.Fatalf("New(%+v): %v, want ErrInvalidOptions naming %s", tc.opts, err, tc.name)
			}
		}
		if _, err := New(nil, Options{Dialect: e.dialect}); !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("New(nil db): %v", err)
		}
		type badRelay struct {
			opts RelayOptions
			name string
		}
		bad := []badRelay{
			{RelayOptions{BatchSize: -1}, "BatchSize -1"},
			{RelayOptions{PollInterval: -time.Second}, "PollInterval -1s"},
			{RelayOptions{LeaseTTL: -time.Second, Retention: -time.Hour}, "Retention -1h0m0s, LeaseTTL -1s"},
			{RelayOptions{MinBackoff: time.Second, MaxBackoff: time.Millisecond}, "MaxBackoff 1ms is below MinBackoff 1s"},
		}
		if e.dialect == SQLite { // the lease is SQLite's
			bad = append(bad, badRelay{RelayOptions{PollInterval: time.Minute}, "PollInterval 1m0s is not below LeaseTTL 10s"})
		}
		for _, tc := range bad {
			if _, err := NewRelay(o, tr, tc.opts); !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.name) {
				t.Fatalf("NewRelay(%+v): %v, want ErrInvalidOptions naming %s", tc.opts, err, tc.name)
			}
		}
		if _, err := NewRelay(o, nil, RelayOptions{}); !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("NewRelay(nil publisher): %v", err)
		}
		once, err := NewRelay(o, tr, RelayOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := once.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := once.Start(ctx); err == nil || !strings.Contains(err.Error(), "Start called twice") {
			t.Fatalf("second Start: %v", err)
		}
		if err := once.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := once.Start(ctx); err == nil || !strings.Contains(err.Error(), "Start after Stop") {
			t.Fatalf("Start after Stop: %v, want an error saying so", err)
		}
		if n := e.count(t, e.table); n != 0 {
			t.Fatalf("%d rows written by failed calls", n)
		}

		// A good event, then the database closes under a running relay:
		// errors, no crash, and the row is still there for the next relay.
		if err := o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: "kept"}) }); err != nil {
			t.Fatal(err)
		}
		other := e.openDB(t)
		oo := e.newOutbox(t, other, nil)
		// LeaseTTL: on SQLite, the relay whose database closed cannot free
		// its lease; the next relay takes over when it expires.
		rr, err := NewRelay(oo, failing{}, RelayOptions{MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, LeaseTTL: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := rr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a failed round", 10*time.Second, func() bool { return rr.Stats().Failed > 0 })
		other.Close()
		if err := oo.Transact(ctx, func(tx *sql.Tx) error { return nil }); err == nil {
			t.Fatal("Transact on a closed database: no error")
		} else {
			t.Log(err)
		}
		rounds := rr.Stats().Rounds
		waitFor(t, "rounds against the closed database", 10*time.Second, func() bool { return rr.Stats().Rounds >= rounds+2 })
		if err := rr.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if n := e.count(t, e.table); n != 1 {
			t.Fatalf("%d rows after the failing relay, want 1 (nothing lost)", n)
		}
		s := subscribe(t, b)
		startRelay(t, o, tr, RelayOptions{})
		waitFor(t, "the kept event", 10*time.Second, func() bool { return s.byIDCount("kept") == 1 })
	})
}

// failing is a transport that refuses everything.
type failing struct{}

func (failing) Publish(context.Context, string, ...*transport.Message) error {
	return transport.ErrUnavailable
}
