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

// SQLStore is a Store in a SQL table keyed by (group_name, message_id), so
// markers survive restarts and are shared by every process of a group.
// Create the table with Migrate; delete old markers with Prune. Safe for
// concurrent use (as *sql.DB is).
type SQLStore struct {
	db      *sql.DB
	dialect Dialect
	table   string
	now     func() time.Time

	seenQ, markQ, pruneQ string
}

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
			return fmt.Errorf("busway: migrate idempotency table %s: %w", s.table, err)
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
	err := s.db.QueryRowContext(ctx, s.seenQ, group, id).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("busway: idempotency lookup in %s: %w", s.table, err)
	}
	return true, nil
}

// Mark records that group handled id; marking twice is not an error.
func (s *SQLStore) Mark(ctx context.Context, group, id string) error {
	if _, err := s.db.ExecContext(ctx, s.markQ, group, id, s.now().UnixMicro()); err != nil {
		return fmt.Errorf("busway: idempotency mark in %s: %w", s.table, err)
	}
	return nil
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
