// Package pgnotify wakes outbox relays through PostgreSQL LISTEN/NOTIFY, so
// a relay delivers rows that other processes committed within a
// millisecond instead of at its next poll. It needs a *sql.DB opened with
// pgx's database/sql driver (github.com/jackc/pgx/v5/stdlib, driver name
// "pgx"); it is the only part of the outbox that imports a driver.
//
//	relay, err := outbox.NewRelay(ob, b.Transport(), outbox.RelayOptions{Listener: pgnotify.New(db)})
//
// The writers' side needs nothing: (*outbox.Outbox).Transact, Commit and
// Wake send a coalesced NOTIFY on the outbox's channel when no relay of
// their own process leads.
package pgnotify

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/busway/busway/outbox"
)

// ErrNotPgx is returned by Listen when the database is not opened with
// pgx's stdlib driver.
var ErrNotPgx = errors.New("pgnotify: the *sql.DB is not opened with the pgx driver (github.com/jackc/pgx/v5/stdlib)")

// New returns a Listener that takes one connection of db for as long as it
// listens (the connection is closed afterwards, never returned to the pool
// while it listens).
func New(db *sql.DB) outbox.Listener { return listener{db} }

type listener struct{ db *sql.DB }

var _ outbox.Listener = listener{}

// Listen implements outbox.Listener.
func (l listener) Listen(ctx context.Context, channel string, wake func()) error {
	if l.db == nil {
		return fmt.Errorf("pgnotify: nil *sql.DB")
	}
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("pgnotify: %w", err)
	}
	defer func() {
		// A listening session never goes back to the pool.
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
	}()
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("%w (driver connection %T)", ErrNotPgx, dc)
		}
		pc := sc.Conn()
		if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("pgnotify: LISTEN %s: %w", channel, err)
		}
		wake() // what was committed before LISTEN took effect
		for {
			if _, err := pc.WaitForNotification(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("pgnotify: waiting on %s: %w", channel, err)
			}
			wake()
		}
	})
}
