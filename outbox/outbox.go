package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// Dialect is the SQL flavour of the database: PostgreSQL or SQLite. It is
// the type of middleware.SQLStore's dialect, so one value configures both
// the outbox and the inbox.
type Dialect = middleware.Dialect

// The dialects.
const (
	// PostgreSQL through any database/sql driver (pgx's stdlib, lib/pq);
	// LISTEN/NOTIFY wake-ups of other processes need package pgnotify.
	PostgreSQL = middleware.PostgreSQL
	// SQLite 3.24 or later through any database/sql driver
	// (modernc.org/sqlite, mattn/go-sqlite3).
	SQLite = middleware.SQLite
)

// Errors.
var (
	// ErrNotMigrated is wrapped when an outbox or inbox table does not
	// exist: run Migrate. (The same value as middleware.ErrNotMigrated.)
	ErrNotMigrated = middleware.ErrNotMigrated
	// ErrInvalidOptions is wrapped by the errors of bad arguments.
	ErrInvalidOptions = transport.ErrInvalidOptions
	// ErrTxDone is wrapped when Publish is given a transaction that is
	// already committed or rolled back (it wraps sql.ErrTxDone as well).
	ErrTxDone = sql.ErrTxDone
	// ErrClosed is wrapped by calls on a closed Outbox or a stopped Relay.
	ErrClosed = transport.ErrClosed
)

// Options configure New. Dialect is required; every other zero value means
// the default.
type Options struct {
	// Dialect of the database. Required.
	Dialect Dialect
	// Bus is the bus whose envelope Publish writes: its source, codec and
	// event type registry (bus.Register). Required for Publish, not for
	// PublishMessage or a relay-only process.
	Bus *bus.Bus
	// Table is the outbox table; Migrate also creates Table+"_dead" (rows
	// moved aside) and Table+"_published" (retention). Default
	// "busway_outbox". Letters, digits and '_', optionally with one schema
	// prefix ("app.busway_outbox").
	Table string
	// InboxTable is the inbox table of Inbox. Default "busway_inbox".
	InboxTable string
	// Propagator injects the trace context of Publish's ctx into the stored
	// headers, so the consumer's span continues the writer's trace. Default
	// otel.GetTextMapPropagator().
	Propagator propagation.TextMapPropagator
	// DisableNotify turns off the PostgreSQL NOTIFY that wakes relays of
	// other processes after Transact, Commit or Wake (see the package doc).
	// Default false: notify, coalesced, when no relay of this process leads.
	DisableNotify bool
	// Logger logs what the relay does not return (poison rows, leadership
	// changes, backoff). Default (or nil): discard.
	Logger *slog.Logger
	// Now is the clock of created_at and retention. Default time.Now.
	Now func() time.Time
}

// Outbox writes events into the outbox table inside callers' transactions
// and wakes the relays. Safe for concurrent use.
type Outbox struct {
	db      *sql.DB
	dialect Dialect
	bus     *bus.Bus
	q       queries
	prop    propagation.TextMapPropagator
	notify  bool
	log     *slog.Logger
	now     func() time.Time
	inbox   *middleware.SQLStore
	sqlite  chan struct{} // 1: held by the leading relay (SQLite)

	// handling holds the transactions of running Handlers, each with
	// whether it was published into: the Handler wakes the relays after it
	// committed one that was.
	handling sync.Map // *sql.Tx -> *atomic.Bool

	mu        sync.Mutex
	relays    map[*Relay]struct{}
	leaders   int // local relays that lead
	closed    bool
	notifying bool // the notifier goroutine runs
	again     bool // a wake came while it ran
	wg        sync.WaitGroup
}

// New returns an Outbox on db. It does not touch the database: run Migrate.
// A nil db, an unknown dialect or a bad table name give an error wrapping
// ErrInvalidOptions.
func New(db *sql.DB, opts Options) (*Outbox, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: outbox.New needs a *sql.DB", ErrInvalidOptions)
	}
	if opts.Dialect != PostgreSQL && opts.Dialect != SQLite {
		return nil, fmt.Errorf("%w: outbox.New: Options.Dialect %v is neither outbox.PostgreSQL nor outbox.SQLite", ErrInvalidOptions, opts.Dialect)
	}
	if opts.Table == "" {
		opts.Table = "busway_outbox"
	}
	// The inbox store validates the dialect and the table names.
	inbox, err := middleware.NewSQLStore(db, middleware.SQLStoreOptions{Dialect: opts.Dialect, Table: opts.InboxTable, Now: opts.Now})
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	if _, err := middleware.NewSQLStore(db, middleware.SQLStoreOptions{Dialect: opts.Dialect, Table: opts.Table}); err != nil {
		return nil, fmt.Errorf("outbox: Table: %w", err)
	}
	if len(indexBase(opts.Table)) > 50 {
		return nil, fmt.Errorf("%w: outbox Table %q: longer than 50 characters (it gets suffixes)", ErrInvalidOptions, opts.Table)
	}
	for _, own := range []string{opts.Table, opts.Table + "_dead", opts.Table + "_published", opts.Table + "_lease"} {
		// Both databases fold unquoted names: "Outbox" is outbox.
		if strings.EqualFold(inbox.Table(), own) {
			return nil, fmt.Errorf("%w: outbox InboxTable %q is a table of the outbox Table %q: give the inbox a name of its own", ErrInvalidOptions, inbox.Table(), opts.Table)
		}
	}
	if opts.Propagator == nil {
		opts.Propagator = otel.GetTextMapPropagator()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Outbox{
		db: db, dialect: opts.Dialect, bus: opts.Bus, q: newQueries(opts.Dialect, opts.Table),
		prop: opts.Propagator, notify: opts.Dialect == PostgreSQL && !opts.DisableNotify,
		log: opts.Logger, now: opts.Now, inbox: inbox, relays: make(map[*Relay]struct{}),
		sqlite: make(chan struct{}, 1),
	}, nil
}

// DB returns the outbox's database.
func (o *Outbox) DB() *sql.DB { return o.db }

// Table returns the outbox table name.
func (o *Outbox) Table() string { return o.q.table }

// Channel returns the PostgreSQL LISTEN/NOTIFY channel of the outbox.
func (o *Outbox) Channel() string { return o.q.channel }

// Inbox returns the inbox store on the same database (Options.InboxTable):
// the middleware.SQLStore that Handler, middleware.Idempotent and
// SQLStore.Transactional use.
func (o *Outbox) Inbox() *middleware.SQLStore { return o.inbox }

// Migrate creates the outbox tables (Table, Table_dead, Table_published;
// on SQLite also Table_lease, the relays' lease) and the inbox table with
// their indexes, if they do not exist. It is idempotent and safe to run
// from several processes at once (on PostgreSQL it serialises them with an
// advisory lock); run it again after upgrading busway, which may add a
// table (a relay's Start names a missing one with ErrNotMigrated).
func (o *Outbox) Migrate(ctx context.Context) error {
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", o.q.table, err)
	}
	defer tx.Rollback()
	if o.dialect == PostgreSQL {
		// Concurrent CREATE ... IF NOT EXISTS can fail on PostgreSQL's
		// catalog; one migration at a time.
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", o.q.lockKey+1); err != nil {
			return fmt.Errorf("outbox: migrate %s: %w", o.q.table, err)
		}
	}
	for _, s := range o.q.migrate {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("outbox: migrate %s: %w", o.q.table, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", o.q.table, err)
	}
	if err := o.inbox.Migrate(ctx); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// Publish writes v, as an event of type T, into the outbox in tx: the
// message bus.Publish would send (bus.NewMessage: ID, type, source, time,
// key, subject, headers, content type, encoded data), plus the trace
// context of ctx. Nothing is sent now. When tx commits, a Relay delivers it
// to T's topic; when tx rolls back, there is no event. Commit with
// Transact or Commit (or call Wake after tx.Commit) so that relays start at
// once instead of at their next poll; a Handler's transaction needs
// neither, it wakes them when it commits.
//
// Errors: a nil Outbox, tx or Options.Bus, or a bad option, wrap
// ErrInvalidOptions; a finished tx wraps ErrTxDone; a missing table wraps
// ErrNotMigrated.
func Publish[T any](ctx context.Context, o *Outbox, tx *sql.Tx, v T, opts ...bus.PublishOption) error {
	if o == nil {
		return fmt.Errorf("%w: outbox.Publish: nil *Outbox", ErrInvalidOptions)
	}
	if o.bus == nil {
		return fmt.Errorf("%w: outbox.Publish: the Outbox has no Options.Bus to build the envelope with", ErrInvalidOptions)
	}
	topic, m, err := bus.NewMessage(o.bus, v, opts...)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return o.insert(ctx, tx, topic, m)
}

// PublishMessage writes ready-made messages for topic into the outbox in
// tx, as Publish does, for programs that build their own messages (a
// replay, a bridge). Each needs an ID: the relay re-sends under it after a
// crash. The messages are not modified. A nil or ID-less message wraps
// transport.ErrInvalidMessage, a bad topic transport.ErrInvalidTopic.
func (o *Outbox) PublishMessage(ctx context.Context, tx *sql.Tx, topic string, msgs ...*transport.Message) error {
	if err := transport.ValidateTopic(topic); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("outbox: message #%d: %w: nil message", i, transport.ErrInvalidMessage)
		}
		if m.ID == "" {
			return fmt.Errorf("outbox: message #%d: %w: empty ID (the relay re-sends under it after a crash)", i, transport.ErrInvalidMessage)
		}
		c := *m
		c.Header = make(map[string]string, len(m.Header)+2)
		for k, v := range m.Header {
			c.Header[k] = v
		}
		if err := o.insert(ctx, tx, topic, &c); err != nil {
			return err
		}
	}
	return nil
}

// insert stores m (whose Header it may modify) in tx.
func (o *Outbox) insert(ctx context.Context, tx *sql.Tx, topic string, m *transport.Message) error {
	if tx == nil {
		return fmt.Errorf("%w: outbox.Publish: nil *sql.Tx", ErrInvalidOptions)
	}
	o.prop.Inject(ctx, propagation.MapCarrier(m.Header))
	body := m.Body
	if body == nil {
		body = []byte{} // NOT NULL
	}
	_, err := tx.ExecContext(ctx, o.q.insert, topic, m.Key, m.ID, encodeHeaders(m.Header), body, o.now().UnixMicro())
	if err == nil {
		if published, ok := o.handling.Load(tx); ok {
			published.(*atomic.Bool).Store(true)
		}
		return nil
	}
	switch {
	case errors.Is(err, sql.ErrTxDone):
		return fmt.Errorf("outbox: publish to %q: the transaction is already committed or rolled back: %w", topic, err)
	case middleware.MissingTable(err):
		return fmt.Errorf("outbox: publish to %q: %w: %s: %w", topic, ErrNotMigrated, o.q.table, err)
	}
	return fmt.Errorf("outbox: publish to %q: %w", topic, err)
}

// Transact runs fn in a transaction of the outbox's database and commits
// it when fn returns nil (rolling back otherwise, and on a panic, which it
// lets through), then wakes the relays. fn's error is returned as it is.
func (o *Outbox) Transact(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	unblock := transport.Block(ctx) // as in SQLStore.HandleTx, for a Transact inside a handler
	tx, err := o.db.BeginTx(ctx, nil)
	unblock()
	if err != nil {
		return fmt.Errorf("outbox: begin: %w", err)
	}
	returned := false
	defer func() {
		if !returned { // fn panicked or called runtime.Goexit
			tx.Rollback()
		}
	}()
	err = fn(tx)
	returned = true
	if err != nil {
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
			return errors.Join(err, fmt.Errorf("outbox: rollback: %w", rbErr))
		}
		return err
	}
	return o.Commit(tx)
}

// Commit commits tx and wakes the relays: use it instead of tx.Commit for
// transactions that called Publish.
func (o *Outbox) Commit(tx *sql.Tx) error {
	if tx == nil {
		return fmt.Errorf("%w: outbox.Commit: nil *sql.Tx", ErrInvalidOptions)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: commit: %w", err)
	}
	o.Wake()
	return nil
}

// Wake tells the relays that rows were committed: the relays of this
// process directly, those of other processes (PostgreSQL, when no relay of
// this process leads) by one NOTIFY, coalesced: wakes that come while a
// NOTIFY is in flight are sent as one more. It never blocks and is cheap.
func (o *Outbox) Wake() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for r := range o.relays {
		r.wakeUp()
	}
	if !o.notify || o.leaders > 0 || o.closed {
		return
	}
	if o.notifying {
		o.again = true
		return
	}
	o.notifying = true
	o.wg.Add(1)
	go o.notifier()
}

// notifier sends NOTIFYs until no wake came during the last one.
func (o *Outbox) notifier() {
	defer o.wg.Done()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := o.db.ExecContext(ctx, o.q.notify, o.q.channel); err != nil {
			o.log.Warn("outbox: NOTIFY failed; relays of other processes will poll", "table", o.q.table, "err", err)
		}
		cancel()
		o.mu.Lock()
		if !o.again || o.closed {
			o.notifying = false
			o.mu.Unlock()
			return
		}
		o.again = false
		o.mu.Unlock()
	}
}

// Close waits for a NOTIFY in flight and stops sending them. It does not
// close the database or stop relays. Idempotent.
func (o *Outbox) Close() error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.wg.Wait()
	return nil
}

func (o *Outbox) addRelay(r *Relay) {
	o.mu.Lock()
	o.relays[r] = struct{}{}
	o.mu.Unlock()
}

func (o *Outbox) removeRelay(r *Relay) {
	o.mu.Lock()
	delete(o.relays, r)
	o.mu.Unlock()
}

func (o *Outbox) setLeader(delta int) {
	o.mu.Lock()
	o.leaders += delta
	o.mu.Unlock()
}

func (o *Outbox) sqliteLead() chan struct{} { return o.sqlite }
