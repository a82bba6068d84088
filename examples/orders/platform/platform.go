// Package platform is what the modules of the orders example share that
// is not an event: each module's own SQLite database with its outbox and
// inbox, the HTTP mux the app serves, and the observability providers.
// It knows no module.
package platform

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/outbox"
)

// Config is the app's configuration that modules need.
type Config struct {
	// DataDir holds each module's SQLite database, <DataDir>/<module>.db.
	DataDir string
}

// Telemetry is what modules use to trace and log; the app owns it.
type Telemetry struct {
	Logger     *slog.Logger
	Tracer     trace.TracerProvider
	Propagator propagation.TextMapPropagator
}

// Store is a module's database and its outbox (whose Inbox records the
// events the module handled).
type Store struct {
	DB     *sql.DB
	Outbox *outbox.Outbox
}

// StoreResult is what NewStore provides.
type StoreResult struct {
	fx.Out
	Store  *Store
	Outbox *outbox.Outbox // for busfx.Relay
}

// NewStore returns the constructor of a module's Store: the SQLite file
// <DataDir>/<name>.db, migrated in OnStart (the outbox and inbox tables,
// then schema), closed in OnStop. Provide it with fx.Private so that the
// module's database stays its own.
func NewStore(name string, schema ...string) func(lc fx.Lifecycle, cfg Config, b *bus.Bus, tel Telemetry) (StoreResult, error) {
	return func(lc fx.Lifecycle, cfg Config, b *bus.Bus, tel Telemetry) (StoreResult, error) {
		path := filepath.Join(cfg.DataDir, name+".db")
		// WAL: readers do not block the writer; BEGIN IMMEDIATE: a write
		// transaction takes the write lock at once, so that two of them
		// wait on busy_timeout instead of failing to upgrade a read lock.
		dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
			"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
		db, err := sql.Open("sqlite", dsn)
		if err != nil {
			return StoreResult{}, fmt.Errorf("%s: open %s: %w", name, path, err)
		}
		// One connection: SQLite has one writer anyway, and waiting for the
		// connection in Go is much faster than SQLite's busy handler, which
		// sleeps in steps of milliseconds (p50 latency of a 300-order burst
		// on chanbus: 100 ms instead of 250-300 ms here). Every statement of
		// a handler runs in its transaction, so nothing waits for a second
		// connection while holding the first.
		db.SetMaxOpenConns(1)
		ob, err := outbox.New(db, outbox.Options{Dialect: outbox.SQLite, Bus: b, Logger: tel.Logger, Propagator: tel.Propagator})
		if err != nil {
			db.Close()
			return StoreResult{}, fmt.Errorf("%s: %w", name, err)
		}
		lc.Append(fx.Hook{
			OnStart: func(ctx context.Context) error {
				if err := ob.Migrate(ctx); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				for _, q := range schema {
					if _, err := db.ExecContext(ctx, q); err != nil {
						return fmt.Errorf("%s: migrate: %w", name, err)
					}
				}
				return nil
			},
			OnStop: func(context.Context) error {
				return errors.Join(ob.Close(), db.Close())
			},
		})
		s := &Store{DB: db, Outbox: ob}
		return StoreResult{Store: s, Outbox: ob}, nil
	}
}

// Routes is the app's HTTP mux; modules add their handlers to it.
type Routes struct{ *http.ServeMux }
