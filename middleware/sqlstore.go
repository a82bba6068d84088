package middleware

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/busway/busway/transport"
)

// Dialect is the SQL flavour of a SQLStore's database.
type Dialect int

const (
	// PostgreSQL, through any database/sql driver (pgx's stdlib, lib/pq).
	PostgreSQL Dialect = iota + 1
	// SQLite, through any database/sql driver (modernc.org/sqlite,
	// mattn/go-sqlite3); version 3.24 or later.
	SQLite
)

func (d Dialect) String() string {
	switch d {
	case PostgreSQL:
		return "postgresql"
	case SQLite:
		return "sqlite"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// SQLStoreOptions configure NewSQLStore.
type SQLStoreOptions struct {
	// Dialect of the database. Required.
	Dialect Dialect
	// Table holds the markers. Default "busway_inbox". Letters, digits and
	// '_', optionally with one schema prefix ("app.busway_inbox").
	Table string
	// Now is the clock for the handled_at column. Default time.Now.
	Now func() time.Time
}

// ErrNotMigrated is wrapped by the errors of SQLStore and of package outbox
// when a table they use does not exist: run their Migrate method (once, at
// deployment or start; it is idempotent).
var ErrNotMigrated = errors.New("table does not exist (run Migrate)")

// SQLStore is a Store in a SQL table keyed by (group_name, message_id), so
// markers survive restarts and are shared by every process of a group: the
// inbox. Create the table with Migrate; delete old markers with Prune. Safe
// for concurrent use (as *sql.DB is).
//
// Used by Idempotent, it marks after the handler returned, in a statement of
// its own (a crash between the two handles the message again). Used through
// HandleTx or Transactional, it records the ID in a transaction that the
// handler's own database writes join, so effects and marker commit or roll
// back together: exactly-once effects on that database.
type SQLStore struct {
	db      *sql.DB
	dialect Dialect
	table   string
	now     func() time.Time

	seenQ, markQ, pruneQ string
}

// DB returns the database of the store.
func (s *SQLStore) DB() *sql.DB { return s.db }

// Dialect returns the store's dialect.
func (s *SQLStore) Dialect() Dialect { return s.dialect }

// Table returns the store's table name.
func (s *SQLStore) Table() string { return s.table }

var _ Store = (*SQLStore)(nil)

// NewSQLStore returns a store on db. It does not touch the database; call
// Migrate once to create the table. A nil db, an unknown dialect or a bad
// table name give an error wrapping transport.ErrInvalidOptions.
func NewSQLStore(db *sql.DB, opts SQLStoreOptions) (*SQLStore, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: SQLStore needs a *sql.DB", transport.ErrInvalidOptions)
	}
	if opts.Dialect != PostgreSQL && opts.Dialect != SQLite {
		return nil, fmt.Errorf("%w: SQLStore Dialect %v is neither PostgreSQL nor SQLite", transport.ErrInvalidOptions, opts.Dialect)
	}
	if opts.Table == "" {
		opts.Table = "busway_inbox"
	}
	if err := validTable(opts.Table); err != "" {
		return nil, fmt.Errorf("%w: SQLStore Table %q: %s", transport.ErrInvalidOptions, opts.Table, err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &SQLStore{db: db, dialect: opts.Dialect, table: opts.Table, now: opts.Now}
	p1, p2, p3 := "$1", "$2", "$3"
	if s.dialect == SQLite {
		p1, p2, p3 = "?", "?", "?"
	}
	s.seenQ = fmt.Sprintf("SELECT 1 FROM %s WHERE group_name = %s AND message_id = %s", s.table, p1, p2)
	s.markQ = fmt.Sprintf("INSERT INTO %s (group_name, message_id, handled_at) VALUES (%s, %s, %s) ON CONFLICT (group_name, message_id) DO NOTHING", s.table, p1, p2, p3)
	s.pruneQ = fmt.Sprintf("DELETE FROM %s WHERE handled_at < %s", s.table, p1)
	return s, nil
}

func validTable(t string) string {
	dots := 0
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case c >= '0' && c <= '9':
			if i == 0 || t[i-1] == '.' {
				return "a name must not start with a digit"
			}
		case c == '.':
			dots++
			if dots > 1 || i == 0 || i == len(t)-1 {
				return "at most one '.', between schema and table"
			}
		default:
			return fmt.Sprintf("character %q is not allowed (letters, digits, '_')", rune(c))
		}
	}
	if len(t) > 63 {
		return "longer than 63 characters"
	}
	return ""
}

// Migrate creates the table and its index if they do not exist. It is safe
// to run at every start.
func (s *SQLStore) Migrate(ctx context.Context) error {
	stmts := []string{
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
	group_name TEXT NOT NULL,
	message_id TEXT NOT NULL,
	handled_at BIGINT NOT NULL,
	PRIMARY KEY (group_name, message_id)
)`, s.table),
		fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s_handled_at ON %s (handled_at)", indexBase(s.table), s.table),
	}
	for _, q := range stmts {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("busway: migrate inbox table %s: %w", s.table, err)
		}
	}
	return nil
}

// indexBase is the table name without a schema: an index lives in its
// table's schema and PostgreSQL rejects a qualified index name.
func indexBase(t string) string {
	return t[strings.LastIndexByte(t, '.')+1:]
}

// Seen reports whether group marked id.
func (s *SQLStore) Seen(ctx context.Context, group, id string) (bool, error) {
	var one int
	unblock := transport.Block(ctx) // see HandleTx
	err := s.db.QueryRowContext(ctx, s.seenQ, group, id).Scan(&one)
	unblock()
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("busway: idempotency lookup in %s: %w", s.table, s.tableErr(err))
	}
	return true, nil
}

// Mark records that group handled id; marking twice is not an error.
func (s *SQLStore) Mark(ctx context.Context, group, id string) error {
	unblock := transport.Block(ctx) // see HandleTx
	_, err := s.db.ExecContext(ctx, s.markQ, group, id, s.now().UnixMicro())
	unblock()
	if err != nil {
		return fmt.Errorf("busway: idempotency mark in %s: %w", s.table, s.tableErr(err))
	}
	return nil
}

// tableErr adds ErrNotMigrated to err when it says that the table is
// missing.
func (s *SQLStore) tableErr(err error) error {
	if MissingTable(err) {
		return fmt.Errorf("%w: %s: %w", ErrNotMigrated, s.table, err)
	}
	return err
}

// MissingTable reports whether err is a database's "no such table" error
// (PostgreSQL SQLSTATE 42P01, SQLite "no such table"), whatever the driver.
func MissingTable(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "42P01") || strings.Contains(msg, "no such table") ||
		(strings.Contains(msg, "relation ") && strings.Contains(msg, " does not exist"))
}

// MarkTx records in tx that group handled id, and reports whether this is
// the first record of it: false means it was recorded before (by a
// committed transaction), and the caller should roll back and treat the
// message as a duplicate. On PostgreSQL a concurrent transaction that
// recorded the same ID and has not finished makes MarkTx wait for its
// outcome, so two deliveries of one event never both see "first".
func (s *SQLStore) MarkTx(ctx context.Context, tx *sql.Tx, group, id string) (first bool, err error) {
	if tx == nil {
		return false, fmt.Errorf("%w: MarkTx: nil *sql.Tx", transport.ErrInvalidOptions)
	}
	res, err := tx.ExecContext(ctx, s.markQ, group, id, s.now().UnixMicro())
	if err != nil {
		if errors.Is(err, sql.ErrTxDone) {
			return false, fmt.Errorf("busway: idempotency mark in %s: the transaction is already committed or rolled back: %w", s.table, err)
		}
		return false, fmt.Errorf("busway: idempotency mark in %s: %w", s.table, s.tableErr(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("busway: idempotency mark in %s: %w", s.table, err)
	}
	return n == 1, nil
}

// HandleTx runs fn in a new transaction of the store's database that first
// records (group, id) (MarkTx), and commits it when fn returns nil. When the
// ID was recorded already it calls nothing and returns duplicate true and a
// nil error. An error of fn, of the marker or of the commit rolls back and
// is returned: nothing of fn's writes and no marker remain, so a
// redelivery runs fn again. So does a panic of fn, which HandleTx rolls
// back and lets through (to Recover, or the transport's own recovery).
// An empty id is an error wrapping
// transport.ErrInvalidMessage: without an ID nothing can be deduplicated.
func (s *SQLStore) HandleTx(ctx context.Context, group, id string, fn func(tx *sql.Tx) error) (duplicate bool, err error) {
	if id == "" {
		return false, fmt.Errorf("%w: the message has no ID (neither ce_id nor Message.ID) to record in the inbox", transport.ErrInvalidMessage)
	}
	// Beginning may wait for a connection of the pool or for SQLite's
	// write lock, which a handler that publishes may hold: tell the
	// transport (chanbus), so that such a publisher does not wait for
	// this handler in turn.
	unblock := transport.Block(ctx)
	tx, err := s.db.BeginTx(ctx, nil)
	unblock()
	if err != nil {
		return false, fmt.Errorf("busway: inbox %s: begin: %w", s.table, err)
	}
	returned := false
	defer func() {
		if !returned { // fn panicked or called runtime.Goexit: leave no transaction (and no lock) behind
			tx.Rollback()
		}
	}()
	first, err := s.MarkTx(ctx, tx, group, id)
	if err != nil || !first {
		returned = true
		return err == nil, errors.Join(err, rollback(tx))
	}
	err = fn(tx)
	returned = true
	if err != nil {
		if rbErr := rollback(tx); rbErr != nil {
			return false, errors.Join(err, rbErr)
		}
		return false, err
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("busway: inbox %s: commit: %w", s.table, err)
	}
	return false, nil
}

// rollback rolls tx back; a transaction already finished is not an error.
func rollback(tx *sql.Tx) error {
	if err := tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("busway: inbox: rollback: %w", err)
	}
	return nil
}

type txKey struct{}

// TxFromContext returns the transaction Transactional runs the handler in,
// or nil outside it.
func TxFromContext(ctx context.Context) *sql.Tx {
	tx, _ := ctx.Value(txKey{}).(*sql.Tx)
	return tx
}

// Transactional is the inbox as middleware: it runs the handler inside
// HandleTx with the message's group and EventID, the transaction available
// to the handler as TxFromContext(ctx). A redelivery of a handled event is
// acknowledged without calling the handler (Metrics counts it as a
// duplicate); a handler error, a store error or a failed commit rolls back
// and fails the message, which is delivered again. It replaces Idempotent
// with the same store; do not use both.
//
// Place it inside DeadLetter (a dead-lettered message is not recorded and
// can be replayed) and, unlike Idempotent, inside Retry: each attempt then
// runs in a transaction of its own, and a failed attempt's writes are rolled
// back before the next one starts.
func (s *SQLStore) Transactional() Middleware {
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			dup, err := s.HandleTx(ctx, m.Group, EventID(m), func(tx *sql.Tx) error {
				return next(context.WithValue(ctx, txKey{}, tx), m)
			})
			if dup {
				if r := reportFrom(ctx); r != nil {
					r.duplicate = true
				}
			}
			return err
		}
	}
}

// Prune deletes markers handled before t and returns how many. Run it
// periodically with a t older than any redelivery you expect (say, a week).
func (s *SQLStore) Prune(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.pruneQ, before.UnixMicro())
	if err != nil {
		return 0, fmt.Errorf("busway: prune idempotency table %s: %w", s.table, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("busway: prune idempotency table %s: %w", s.table, err)
	}
	return n, nil
}
