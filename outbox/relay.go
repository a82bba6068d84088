package outbox

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// Listener wakes a relay when another process committed outbox rows. Package
// pgnotify implements it with PostgreSQL LISTEN.
type Listener interface {
	// Listen calls wake (which never blocks) for every notification on
	// channel until ctx ends, then returns ctx.Err(). Another error means
	// listening broke; the relay calls Listen again after a pause and polls
	// meanwhile.
	Listen(ctx context.Context, channel string, wake func()) error
}

// RelayOptions configure NewRelay. The zero value means the defaults.
type RelayOptions struct {
	// BatchSize is the most rows read, published and deleted per round.
	// Default 500.
	BatchSize int
	// PollInterval is how long the relay waits for a wake-up before it
	// looks for rows anyway (rows committed without Transact, Commit or
	// Wake, and other processes' rows when there is no Listener). Default
	// 100ms; on SQLite at most LeaseTTL/3, and one of LeaseTTL or more is
	// an error (the idle leader's lease would lapse).
	PollInterval time.Duration
	// Listener wakes the relay on other processes' commits (PostgreSQL:
	// pgnotify.New(db)). Default none: local wake-ups and polling.
	Listener Listener
	// Coalesce is the least time between the starts of two rounds that
	// are not full: under a steady stream of small commits the relay then
	// reads, publishes and deletes several at once instead of one
	// statement per commit, which leaves the database to the writers. A
	// round after an idle spell starts at once, and a backlog is read
	// without pause. Under a heavy stream the spacing grows with the rate
	// the last round found, one Coalesce per row that came per Coalesce,
	// up to 8 x Coalesce (with the default, 2ms at 2,000 rows/s, 8ms from
	// 8,000 rows/s): fewer, larger rounds where their fixed cost (a
	// statement, a publish call, wake-ups) would take CPU from the writers,
	// while a light stream (up to one row per Coalesce) keeps Coalesce.
	// So this adds at most Coalesce (8 x Coalesce under a heavy stream) to
	// the latency of a commit that comes right after another. Default 1ms;
	// negative: none.
	Coalesce time.Duration
	// LeaseTTL (SQLite) is how long the relay lease lasts unless renewed:
	// the longest a crashed leader process delays the relay of another
	// process. The leader renews it before each round (so also while idle,
	// at least every PollInterval; keep PollInterval well below LeaseTTL).
	// Default 10s.
	LeaseTTL time.Duration
	// MinBackoff and MaxBackoff bound the pause after a round that failed
	// (the transport or the database is down); it doubles per failed round
	// and resets after a good one. Defaults 100ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// Retention keeps published rows in Table_published for this long
	// (for audit or replay) instead of deleting them at once; the relay
	// deletes older ones about every Retention/2 (at most every minute).
	// Default 0: delete at once.
	Retention time.Duration
	// VacuumEvery (PostgreSQL) is how many published rows the relay lets
	// pass between two VACUUMs of the outbox table, at most one a second,
	// run on a connection of their own beside the rounds. Every round reads
	// the table in id order from its first index entry, and the entries of
	// the rows deleted before are walked over until VACUUM removes them,
	// while autovacuum visits a table at most every autovacuum_naptime (1
	// minute by default): by then a stream of 25,000 rows/s has left 1.5
	// million of them, and 500,000 already cost each read of 100 rows
	// 2.2ms here (PostgreSQL 15). VACUUM (SKIP_LOCKED) skips the table while
	// autovacuum works on it, blocks no writer, and needs the table's
	// owner (or, PostgreSQL 17, the MAINTAIN privilege): without it
	// PostgreSQL skips the table with a warning and autovacuum is all
	// there is. Default 20,000; negative: never (leave it to autovacuum).
	// SQLite frees a deleted row's space at once and is never vacuumed.
	VacuumEvery int
	// OnPoison is called for each row that can never be published (corrupt
	// headers, an invalid topic, a message the transport rejects as
	// invalid or too large) after it was moved to Table_dead. Default:
	// only logged and counted.
	OnPoison func(ctx context.Context, p Poison)
	// MeterProvider makes the meter of the relay's metrics. Default
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// TracerProvider makes the tracer of the relay's spans: one producer
	// span "send <topic>" per Publish call (messaging.* attributes, the
	// batch size), linked to each message's stored trace context, which
	// the messages keep (see the package doc, Tracing). Default
	// otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

// Poison describes a row moved aside to Table_dead.
type Poison struct {
	RowID int64
	Topic string
	ID    string // the message ID
	Err   error
}

// Metric names of the relay (OpenTelemetry API; each carries
// AttrTable).
const (
	// MetricPending: gauge of rows waiting in the outbox table.
	MetricPending = "busway.outbox.pending"
	// MetricOldestAge: gauge of the age of the oldest waiting row, seconds.
	MetricOldestAge = "busway.outbox.oldest_pending.age"
	// MetricPublished: counter of rows published (and deleted or archived).
	MetricPublished = "busway.outbox.published"
	// MetricFailed: counter of row publish attempts that failed and will be
	// retried.
	MetricFailed = "busway.outbox.failed"
	// MetricPoisoned: counter of rows moved to Table_dead.
	MetricPoisoned = "busway.outbox.poisoned"
)

// AttrTable is the outbox table on the relay's metrics.
const AttrTable = attribute.Key("busway.outbox.table")

// RelayStats are counters of a Relay since NewRelay.
type RelayStats struct {
	Published, Failed, Poisoned uint64
	// Rounds counts batches read (empty ones included).
	Rounds uint64
	// Leader reports whether the relay leads now.
	Leader bool
}

// Relay moves committed outbox rows to a transport. See the package doc for
// its delivery guarantees. Start it once; Stop it once.
type Relay struct {
	o    *Outbox
	pub  transport.Publisher
	opts RelayOptions

	wake   chan struct{} // 1: a wake-up is pending
	owner  string        // SQLite lease owner: random, per relay
	tracer trace.Tracer

	mu       sync.Mutex
	started  bool
	stopping chan struct{}
	stopCtx  context.Context // ends at Stop: waits, the leader lock
	stopIt   context.CancelFunc
	hardCtx  context.Context // ends when Stop's ctx ends: the round's work
	hardStop context.CancelFunc
	done     chan struct{}
	wg       sync.WaitGroup
	reg      metric.Registration

	published, failed, poisoned, rounds atomic.Uint64
	leader                              atomic.Bool
	cPublished, cFailed, cPoisoned      metric.Int64Counter
	attrs                               metric.MeasurementOption

	// VACUUM of the table (PostgreSQL, see RelayOptions.VacuumEvery):
	// the published count at the last one and its start, read and written
	// by the leading goroutine alone; vacuuming while one runs.
	vacuumedAt   uint64
	lastVacuum   time.Time
	vacuuming    atomic.Bool
	vacuumFailed time.Time // last failure logged

	// afterPublish, when set (tests), runs after a round's publish and
	// before its delete; an error abandons the round as a crash there would.
	afterPublish func() error
}

// NewRelay returns a relay of o's table to pub (typically the bus's
// transport, b.Transport()). Start it.
func NewRelay(o *Outbox, pub transport.Publisher, opts RelayOptions) (*Relay, error) {
	switch {
	case o == nil:
		return nil, fmt.Errorf("%w: NewRelay: nil *Outbox", ErrInvalidOptions)
	case pub == nil:
		return nil, fmt.Errorf("%w: NewRelay: nil Publisher", ErrInvalidOptions)
	}
	var negative []string
	if opts.BatchSize < 0 {
		negative = append(negative, fmt.Sprintf("BatchSize %d", opts.BatchSize))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"PollInterval", opts.PollInterval}, {"MinBackoff", opts.MinBackoff}, {"MaxBackoff", opts.MaxBackoff}, {"Retention", opts.Retention}, {"LeaseTTL", opts.LeaseTTL}} {
		if d.v < 0 {
			negative = append(negative, fmt.Sprintf("%s %v", d.name, d.v))
		}
	}
	if len(negative) > 0 {
		return nil, fmt.Errorf("%w: NewRelay: negative %s (0 means the default)", ErrInvalidOptions, strings.Join(negative, ", "))
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = 500
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = 10 * time.Second
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 100 * time.Millisecond
		if o.dialect == SQLite {
			opts.PollInterval = min(opts.PollInterval, opts.LeaseTTL/3)
		}
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	switch {
	case opts.Coalesce == 0:
		opts.Coalesce = time.Millisecond
	case opts.Coalesce < 0:
		opts.Coalesce = 0
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	if opts.VacuumEvery == 0 {
		opts.VacuumEvery = 20_000
	}
	if opts.MaxBackoff < opts.MinBackoff {
		return nil, fmt.Errorf("%w: NewRelay: MaxBackoff %v is below MinBackoff %v", ErrInvalidOptions, opts.MaxBackoff, opts.MinBackoff)
	}
	if o.dialect == SQLite && opts.PollInterval >= opts.LeaseTTL {
		return nil, fmt.Errorf("%w: NewRelay: PollInterval %v is not below LeaseTTL %v: an idle leader renews its lease every PollInterval, and it would lapse between renewals",
			ErrInvalidOptions, opts.PollInterval, opts.LeaseTTL)
	}
	mp := opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	tp := opts.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	r := &Relay{o: o, pub: pub, opts: opts, wake: make(chan struct{}, 1), owner: newOwner(),
		tracer: tp.Tracer("github.com/busway/busway/outbox")}
	meter := mp.Meter("github.com/busway/busway/outbox")
	r.attrs = metric.WithAttributes(AttrTable.String(o.q.table))
	// Instrument errors come only from invalid names, constants here.
	r.cPublished, _ = meter.Int64Counter(MetricPublished, metric.WithUnit("{row}"), metric.WithDescription("Outbox rows published."))
	r.cFailed, _ = meter.Int64Counter(MetricFailed, metric.WithUnit("{row}"), metric.WithDescription("Outbox row publish attempts that failed and will be retried."))
	r.cPoisoned, _ = meter.Int64Counter(MetricPoisoned, metric.WithUnit("{row}"), metric.WithDescription("Outbox rows moved to the dead table."))
	pending, _ := meter.Int64ObservableGauge(MetricPending, metric.WithUnit("{row}"), metric.WithDescription("Outbox rows waiting to be published."))
	oldest, _ := meter.Float64ObservableGauge(MetricOldestAge, metric.WithUnit("s"), metric.WithDescription("Age of the oldest outbox row waiting."))
	reg, err := meter.RegisterCallback(func(ctx context.Context, ob metric.Observer) error {
		if !r.leader.Load() {
			return nil // one relay reports the table
		}
		n, age, err := r.pendingStats(ctx)
		if err != nil {
			return err
		}
		ob.ObserveInt64(pending, n, r.attrs)
		ob.ObserveFloat64(oldest, age.Seconds(), r.attrs)
		return nil
	}, pending, oldest)
	if err == nil {
		r.reg = reg
	}
	return r, nil
}

// pendingStats counts the waiting rows and the age of the oldest.
func (r *Relay) pendingStats(ctx context.Context) (int64, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var n, oldest int64
	if err := r.o.db.QueryRowContext(ctx, r.o.q.stats).Scan(&n, &oldest); err != nil {
		return 0, 0, fmt.Errorf("outbox: pending rows of %s: %w", r.o.q.table, err)
	}
	if n == 0 {
		return 0, 0, nil
	}
	return n, max(0, r.o.now().Sub(time.UnixMicro(oldest))), nil
}

// Pending returns the number of rows waiting in the outbox table and the age
// of the oldest.
func (r *Relay) Pending(ctx context.Context) (rows int64, oldest time.Duration, err error) {
	return r.pendingStats(ctx)
}

// Stats returns the relay's counters.
func (r *Relay) Stats() RelayStats {
	return RelayStats{Published: r.published.Load(), Failed: r.failed.Load(), Poisoned: r.poisoned.Load(),
		Rounds: r.rounds.Load(), Leader: r.leader.Load()}
}

func (r *Relay) wakeUp() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Start checks that the tables exist (an error wrapping ErrNotMigrated
// otherwise) and starts the relay in the background: it competes for
// leadership (PostgreSQL: an advisory lock, see the package doc) and, while
// it leads, moves rows. ctx bounds only the check. A second Start is an
// error.
func (r *Relay) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		if r.stopped() {
			return fmt.Errorf("outbox: relay of %s: Start after Stop (a stopped relay does not restart; make a new one with NewRelay)", r.o.q.table)
		}
		return fmt.Errorf("outbox: relay of %s: Start called twice", r.o.q.table)
	}
	var n int64
	if err := r.o.db.QueryRowContext(ctx, r.o.q.probe).Scan(&n); err != nil {
		if middleware.MissingTable(err) {
			return fmt.Errorf("outbox: relay: %w: %s: %w", ErrNotMigrated, r.o.q.table, err)
		}
		return fmt.Errorf("outbox: relay of %s: %w", r.o.q.table, err)
	}
	r.started = true
	r.stopping = make(chan struct{})
	r.done = make(chan struct{})
	r.stopCtx, r.stopIt = context.WithCancel(context.Background())
	r.hardCtx, r.hardStop = context.WithCancel(context.Background())
	r.o.addRelay(r)
	if l := r.opts.Listener; l != nil {
		r.wg.Add(1)
		go r.listen(l)
	}
	r.wg.Add(1)
	go r.run()
	return nil
}

// Stop stops the relay: it finishes the round in flight (publish, then
// delete) and returns. If ctx ends first, the round is cancelled (its rows
// stay and are published again later) and Stop returns ctx's error once the
// relay's goroutines ended. Stop before Start, or a second Stop, returns nil.
func (r *Relay) Stop(ctx context.Context) error {
	r.mu.Lock()
	if !r.started {
		r.mu.Unlock()
		return nil
	}
	select {
	case <-r.stopping:
	default:
		close(r.stopping)
		r.stopIt()
	}
	r.mu.Unlock()
	var err error
	select {
	case <-r.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	r.hardStop()
	r.wg.Wait()
	r.o.removeRelay(r)
	if r.reg != nil {
		r.reg.Unregister()
	}
	return err
}

func (r *Relay) stopped() bool {
	select {
	case <-r.stopping:
		return true
	default:
		return false
	}
}

// sleep waits d or until Stop; it reports whether the relay goes on.
func (r *Relay) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.stopping:
		return false
	}
}

func (r *Relay) backoff(fails int) time.Duration {
	return backoff.Policy{InitialInterval: r.opts.MinBackoff, MaxInterval: r.opts.MaxBackoff}.Delay(fails)
}

func (r *Relay) listen(l Listener) {
	defer r.wg.Done()
	for fails := 1; ; fails++ {
		err := l.Listen(r.stopCtx, r.o.q.channel, r.wakeUp)
		if r.stopped() {
			return
		}
		r.o.log.Warn("outbox: listening for wake-ups failed; polling meanwhile", "table", r.o.q.table, "err", err)
		r.wakeUp() // what was committed while not listening
		if !r.sleep(r.backoff(fails)) {
			return
		}
	}
}

// execer is what a round runs on: the leader's connection (PostgreSQL) or
// the database (SQLite).
type execer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

func (r *Relay) run() {
	defer r.wg.Done()
	defer close(r.done)
	for fails := 0; !r.stopped(); {
		ex, release, renew, err := r.lead()
		if err != nil {
			if r.stopped() {
				return
			}
			fails++
			r.o.log.Warn("outbox: relay cannot take the lead", "table", r.o.q.table, "err", err)
			if !r.sleep(r.backoff(fails)) {
				return
			}
			continue
		}
		fails = 0
		r.leader.Store(true)
		r.o.setLeader(1)
		r.o.log.Debug("outbox: relay leads", "table", r.o.q.table)
		err = r.lead1(ex, renew)
		r.leader.Store(false)
		r.o.setLeader(-1)
		release()
		if err != nil && !r.stopped() {
			r.o.log.Warn("outbox: relay gave up the lead", "table", r.o.q.table, "err", err)
			if !r.sleep(r.opts.MinBackoff) {
				return
			}
		}
	}
}

// lead blocks until this relay leads, and returns what its rounds run on,
// the function that gives the lead up, and (SQLite) the function that
// checks before each round that the lead is still held.
//
// PostgreSQL: a session advisory lock on a connection of its own, held for
// as long as the relay leads; the rounds run on that connection, so a
// leader whose session died (and lost the lock) fails its next statement and
// steps down. A follower blocks in pg_advisory_lock and takes over the
// moment the leader's session ends (Stop, crash, network loss once the
// server notices).
//
// SQLite: one relay of the Outbox at a time in this process, and across
// processes (any *sql.DB on the file) a lease row in Table_lease: an owner
// and an expiry, taken in one statement when it is free, expired or already
// ours, renewed before each round while less than two thirds of
// RelayOptions.LeaseTTL remain, and freed by Stop. A follower tries to take
// it every PollInterval; a leader that finds it taken by another (it failed
// to renew in time: stalled or cut off for LeaseTTL) steps down before its
// next round.
func (r *Relay) lead() (execer, func(), func(context.Context) error, error) {
	if r.o.dialect == SQLite {
		select {
		case r.o.sqliteLead() <- struct{}{}:
		case <-r.stopping:
			return nil, nil, nil, ErrClosed
		}
		renew, err := r.takeLease()
		if err != nil {
			if r.stopped() {
				// Stop cancelled the take, which may have taken the lease
				// all the same: free it, or the next relay waits LeaseTTL.
				r.freeLease()
			}
			<-r.o.sqliteLead()
			return nil, nil, nil, err
		}
		release := func() {
			r.freeLease()
			<-r.o.sqliteLead()
		}
		return r.o.db, release, renew, nil
	}
	conn, err := r.o.db.Conn(r.stopCtx)
	if err != nil {
		return nil, nil, nil, err
	}
	discard := func() {
		// Never back to the pool with the lock: end the session.
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
	}
	if _, err := conn.ExecContext(r.stopCtx, "SELECT pg_advisory_lock($1)", r.o.q.lockKey); err != nil {
		discard()
		return nil, nil, nil, fmt.Errorf("pg_advisory_lock: %w", err)
	}
	// The relay's own writes (deleting published rows, moving poison rows
	// aside) need not wait for the WAL flush: if the server crashes before
	// it, the rows come back and are published again, which at-least-once
	// allows; nothing is lost. This keeps the relay's commits off the
	// writers' commit path and out of a drain's critical path.
	if _, err := conn.ExecContext(r.stopCtx, "SET synchronous_commit = off"); err != nil {
		discard()
		return nil, nil, nil, fmt.Errorf("SET synchronous_commit: %w", err)
	}
	return conn, discard, nil, nil
}

// freeLease deletes the SQLite lease row if this relay owns it.
func (r *Relay) freeLease() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.o.db.ExecContext(ctx, r.o.q.leaseFree, r.owner); err != nil {
		r.o.log.Warn("outbox: freeing the relay lease failed; another relay takes over when it expires", "table", r.o.q.lease, "err", err)
	}
}

// takeLease blocks until this relay holds the SQLite lease (or Stop), and
// returns the function that renews it.
func (r *Relay) takeLease() (func(context.Context) error, error) {
	ttl := r.opts.LeaseTTL
	for {
		now := time.Now()
		res, err := r.o.db.ExecContext(r.stopCtx, r.o.q.leaseTake, r.owner, now.Add(ttl).UnixMicro(), now.UnixMicro())
		if err != nil {
			return nil, fmt.Errorf("take the relay lease %s: %w", r.o.q.lease, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, fmt.Errorf("take the relay lease %s: %w", r.o.q.lease, err)
		} else if n == 1 {
			break
		}
		if !r.sleep(r.opts.PollInterval) {
			return nil, ErrClosed
		}
	}
	until := time.Now().Add(ttl)
	return func(ctx context.Context) error {
		if time.Until(until) > ttl/3 {
			return nil
		}
		now := time.Now()
		res, err := r.o.db.ExecContext(ctx, r.o.q.leaseRenew, now.Add(ttl).UnixMicro(), r.owner)
		if err != nil {
			return &dbError{fmt.Errorf("outbox: renew the relay lease %s: %w", r.o.q.lease, err)}
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return &dbError{fmt.Errorf("outbox: the relay lease %s was taken by another relay (not renewed within LeaseTTL %v): %w", r.o.q.lease, ttl, errLeaseLost)}
		}
		until = now.Add(ttl)
		return nil
	}, nil
}

var errLeaseLost = errors.New("lead lost")

// lead1 runs rounds while the relay leads: until Stop, or until a database
// error (the leader's connection may be gone: give the lead up).
func (r *Relay) lead1(ex execer, renew func(context.Context) error) error {
	poll := time.NewTimer(r.opts.PollInterval)
	defer poll.Stop()
	var lastPrune time.Time
	// sent are the rows of the last round, published and not yet deleted:
	// the next round deletes them in the statement that reads its batch.
	var sent []int64
	// ahead is the next batch, read while the last one was published (a
	// backlog); sent is empty then.
	var ahead []row
	defer func() {
		// On Stop (or a lost lead) the round's rows are deleted now; if
		// that fails they stay and are published again.
		if len(sent) > 0 {
			if err := r.finish(r.hardCtx, ex, sent); err != nil {
				r.o.log.Warn("outbox: deleting published rows failed; they will be published again", "table", r.o.q.table, "rows", len(sent), "err", err)
			}
		}
	}()
	var roundStart, found time.Time // found: start of the last round that read rows
	spacing := r.opts.Coalesce      // least time between the starts of rounds that read rows
	for fails := 0; ; {
		roundStart = time.Now()
		if renew != nil {
			if err := renew(r.hardCtx); err != nil {
				return err // the rows of sent were accepted: deleting them is safe
			}
		}
		n, next, nextAhead, err := r.round(r.hardCtx, ex, sent, ahead)
		sent, ahead = next, nextAhead
		r.rounds.Add(1)
		if r.stopped() {
			return nil
		}
		var dbErr *dbError
		switch {
		case errors.As(err, &dbErr) && r.o.dialect == PostgreSQL, errors.Is(err, errLeaseLost):
			return err
		case err != nil:
			fails++
			r.o.log.Warn("outbox: relay round failed; backing off", "table", r.o.q.table, "fails", fails, "err", err)
			if !r.sleep(r.backoff(fails)) {
				return nil
			}
			continue
		}
		fails = 0
		r.maybeVacuum()
		if ret := r.opts.Retention; ret > 0 && r.o.now().Sub(lastPrune) >= min(ret/2, time.Minute) {
			lastPrune = r.o.now()
			if _, err := ex.ExecContext(r.hardCtx, r.o.q.pruneArchive, lastPrune.Add(-ret).UnixMicro()); err != nil {
				r.o.log.Warn("outbox: retention delete failed", "table", r.o.q.published, "err", err)
			}
		}
		if n >= r.opts.BatchSize || len(ahead) > 0 {
			continue // a backlog: no pause
		}
		if n > 0 {
			spacing = streamSpacing(r.opts.Coalesce, n, roundStart.Sub(found))
			found = roundStart
		}
		if n == 0 {
			if !poll.Stop() {
				select {
				case <-poll.C:
				default:
				}
			}
			poll.Reset(r.opts.PollInterval)
			select {
			case <-r.wake:
			case <-poll.C:
			case <-r.stopping:
				return nil
			}
		}
		// The next round (which deletes what was sent and reads what came
		// meanwhile) starts at once, or spacing (Coalesce, more under a
		// heavy stream) after the start of the last round that found rows,
		// if that was more recent: one commit after an idle spell goes out
		// at once, a stream of commits goes out at most every spacing.
		if d := spacing - time.Since(found); d > 0 {
			if !r.sleep(d) {
				return nil
			}
		}
	}
}

// minVacuumInterval is the least time between the starts of two VACUUMs
// of the outbox table (RelayOptions.VacuumEvery).
const minVacuumInterval = time.Second

// maybeVacuum starts a VACUUM of the outbox table when VacuumEvery rows
// were published since the last one started, a second has passed, and
// none runs (PostgreSQL). It runs on a connection of the pool, so that the
// rounds go on meanwhile, and ends at Stop (a cancelled VACUUM leaves
// nothing behind). A failure is logged at most once a minute.
func (r *Relay) maybeVacuum() {
	if r.o.dialect != PostgreSQL || r.opts.VacuumEvery < 0 {
		return
	}
	published := r.published.Load()
	if published-r.vacuumedAt < uint64(r.opts.VacuumEvery) || time.Since(r.lastVacuum) < minVacuumInterval ||
		!r.vacuuming.CompareAndSwap(false, true) {
		return
	}
	r.vacuumedAt, r.lastVacuum = published, time.Now()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.vacuuming.Store(false)
		_, err := r.o.db.ExecContext(r.stopCtx, r.o.q.vacuum)
		if err != nil && r.stopCtx.Err() == nil && time.Since(r.vacuumFailed) >= time.Minute {
			r.vacuumFailed = time.Now()
			r.o.log.Warn("outbox: VACUUM of the outbox table failed; autovacuum is left to remove deleted rows", "table", r.o.q.table, "err", err)
		}
	}()
}

// maxCoalesce bounds the spacing of rounds under a stream, in Coalesce.
const maxCoalesce = 8

// streamSpacing is the least time from the start of a round that found n
// rows to the start of the next (RelayOptions.Coalesce c): c times the
// rows that came per c, n over iv (the time since the start of the round
// before that found rows, over which they came), at least 1, at most
// maxCoalesce. Up to 1,000 commits per second (500 one-row commits: one
// row a round) keep c = 1ms; the spacing grows with the rate beyond
// (2,000 rows/s: 2ms, 4 rows a round; 6,000 rows/s: 6ms, 36 rows) up to
// 8ms from 8,000 rows/s (200 rows a round at 25,000/s: 125 rounds a second,
// against 250 with a bound of 4ms and 1,000-4,000 without). Besides its rows, a round costs PostgreSQL
// some 60-75us of CPU (its statement) and the relay's process about as
// much (the round trip, a publish call, its wake-ups): CPU the writers
// would have under a stream.
func streamSpacing(c time.Duration, n int, iv time.Duration) time.Duration {
	if c <= 0 {
		return 0
	}
	f := float64(maxCoalesce)
	if iv > 0 {
		f = min(maxCoalesce, max(1, float64(n)*float64(c)/float64(iv)))
	}
	return time.Duration(f * float64(c))
}

// dbError is a round's database failure (as opposed to the transport's).
type dbError struct{ err error }

func (e *dbError) Error() string { return e.err.Error() }
func (e *dbError) Unwrap() error { return e.err }

// row is one outbox row as the relay reads it: its headers are decoded
// while it is scanned (hdrErr: they are corrupt, the row is poison).
type row struct {
	id       int64
	topic    string
	key, mid string
	header   map[string]string
	hdrErr   error
	body     []byte
}

// read deletes (or archives) the rows of prev, published by the round
// before, and reads the next batch. On PostgreSQL both are one statement.
// If it fails, the rows of prev may stay: they are published again.
func (r *Relay) read(ctx context.Context, ex execer, prev []int64) ([]row, error) {
	q := &r.o.q
	var rs *sql.Rows
	var err error
	switch {
	case len(prev) == 0:
		rs, err = ex.QueryContext(ctx, q.selectBatch, r.opts.BatchSize)
	case r.o.dialect == PostgreSQL && r.opts.Retention <= 0:
		lo, hi := pgRanges(prev)
		rs, err = ex.QueryContext(ctx, q.finishSelect, lo, hi, r.opts.BatchSize)
	case r.o.dialect == PostgreSQL:
		lo, hi := pgRanges(prev)
		rs, err = ex.QueryContext(ctx, q.finishArchiveSelect, lo, hi, r.opts.BatchSize, r.o.now().UnixMicro())
	default:
		if err := r.finish(ctx, ex, prev); err != nil {
			return nil, err
		}
		prev = nil
		rs, err = ex.QueryContext(ctx, q.selectBatch, r.opts.BatchSize)
	}
	if err != nil {
		return nil, &dbError{fmt.Errorf("outbox: read %s: %w", q.table, err)}
	}
	rows, err := scanRows(rs, r.opts.BatchSize)
	if err != nil {
		return nil, &dbError{fmt.Errorf("outbox: read %s: %w", q.table, err)}
	}
	if len(prev) > 0 {
		r.published.Add(uint64(len(prev)))
		r.cPublished.Add(ctx, int64(len(prev)), r.attrs)
	}
	return rows, nil
}

// readAheadRows is about how many rows a read-ahead takes (a whole number
// of batches, at least one): under a backlog one statement reads the next
// four batches of 500, so that the index range of rows deleted before
// (which a scan from the oldest id walks until VACUUM removes it) and the
// statement's fixed cost are paid once per four batches.
const readAheadRows = 2000

// aheadRows is how many rows a read-ahead reads.
func (r *Relay) aheadRows() int {
	b := r.opts.BatchSize
	return max(1, readAheadRows/b) * b
}

// readAhead reads the batches after the rows of cur, which are being
// published and are not deleted yet.
func (r *Relay) readAhead(ctx context.Context, ex execer, cur []row) ([]row, error) {
	var after any = cur[len(cur)-1].id // SQLite: the highest id (rows are in id order)
	if r.o.dialect == PostgreSQL {
		ids := make([]int64, len(cur))
		for i := range cur {
			ids[i] = cur[i].id
		}
		after = pgArray(ids)
	}
	n := r.aheadRows()
	rs, err := ex.QueryContext(ctx, r.o.q.selectAhead, after, n)
	if err != nil {
		return nil, err
	}
	return scanRows(rs, n)
}

// scanRows reads the rows of rs and decodes their headers. The headers
// column is scanned as sql.RawBytes (no copy; valid until the next Next)
// and decoded at once into one string per row that the names and values
// share (see decodeHeaders): two allocations per row where a copy of the
// column and a string per name and value took a dozen or more.
func scanRows(rs *sql.Rows, size int) ([]row, error) {
	rows := make([]row, 0, min(size, 64))
	var hdr sql.RawBytes
	for rs.Next() {
		var x row
		if err := rs.Scan(&x.id, &x.topic, &x.key, &x.mid, &hdr, &x.body); err != nil {
			rs.Close()
			return nil, err
		}
		x.header, x.hdrErr = decodeHeaders(hdr)
		rows = append(rows, x)
	}
	if err := errors.Join(rs.Err(), rs.Close()); err != nil {
		return nil, err
	}
	return rows, nil
}

// round deletes (or archives) the rows of prev, which the round before
// published, reads one batch and publishes it. It returns the number of
// rows read and the ids of those the transport accepted, which the next
// round (or lead1 at the end) deletes. A round that does not end cleanly
// (a row failed or was poison) deletes what it can itself and returns no
// ids.
//
// Per-key order under partial failure: when the transport accepted some
// messages of a batch and not others, the accepted rows of a key that come
// after its first failed row are kept, not deleted: the next round
// publishes the failed row and them again, in id order.
//
// Read-ahead (a full batch): while the batch is published, the next
// batches (aheadRows) are read (on PostgreSQL on the same connection),
// leaving out the batch's rows (see queries.selectAhead). If the batch
// went out cleanly, the round deletes it itself, so that no more than one
// batch is ever published and not deleted
// (what a crash re-sends), and returns the rows read ahead as ahead: the
// next rounds publish them, one batch each, without reading, and the last
// of them reads ahead again. Otherwise the rows read ahead are dropped.
func (r *Relay) round(ctx context.Context, ex execer, prev []int64, ahead []row) (int, []int64, []row, error) {
	rows := ahead
	var later []row // the batches after this one, read before or meanwhile
	if b := r.opts.BatchSize; len(rows) > b {
		rows, later = rows[:b:b], rows[b:]
	}
	if len(rows) == 0 {
		var err error
		rows, err = r.read(ctx, ex, prev)
		if err != nil || len(rows) == 0 {
			return 0, nil, nil, err
		}
	}
	var next chan []row // the batches after, read meanwhile
	if len(rows) >= r.opts.BatchSize && len(later) == 0 {
		next = make(chan []row, 1)
		go func() {
			// An error here is found again by the next round's read.
			rs, _ := r.readAhead(ctx, ex, rows)
			next <- rs
		}()
	}
	// wait waits for the read-ahead, which uses ex, and returns its rows.
	wait := func() []row {
		if next != nil {
			later, next = <-next, nil
		}
		return later
	}
	defer wait()

	// Group by topic, keeping id order within each: per-key order is per
	// topic.
	type group struct {
		topic string
		idx   []int
		msgs  []*transport.Message
	}
	var groups []*group
	byTopic := make(map[string]*group)
	var poison []Poison
	msgs := make([]transport.Message, len(rows))
	for i := range rows {
		x := &rows[i]
		err := x.hdrErr
		if err == nil {
			err = transport.ValidateTopic(x.topic)
		}
		if err != nil {
			poison = append(poison, Poison{RowID: x.id, Topic: x.topic, ID: x.mid, Err: err})
			continue
		}
		msgs[i] = transport.Message{ID: x.mid, Key: x.key, Header: x.header, Body: x.body}
		g := byTopic[x.topic]
		if g == nil {
			g = &group{topic: x.topic}
			byTopic[x.topic] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
		g.msgs = append(g.msgs, &msgs[i])
	}

	done := make([]int64, 0, len(rows))
	var retry, held int
	var pubErr error
	for _, g := range groups {
		res, err := r.publish(ctx, g.topic, g.msgs)
		var failedKeys map[string]bool // keys with a row to retry
		for j, o := range res {
			x := &rows[g.idx[j]]
			switch {
			case o.err == nil && !failedKeys[x.key]:
				done = append(done, x.id)
			case o.err == nil:
				held++ // accepted after a failed row of its key: re-sent after it
			case o.poison:
				poison = append(poison, Poison{RowID: x.id, Topic: x.topic, ID: x.mid, Err: o.err})
			default:
				retry++
				if x.key != "" {
					if failedKeys == nil {
						failedKeys = make(map[string]bool)
					}
					failedKeys[x.key] = true
				}
			}
		}
		if err != nil {
			pubErr = errors.Join(pubErr, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	wait()
	if r.afterPublish != nil {
		if err := r.afterPublish(); err != nil {
			return len(rows), nil, nil, err
		}
	}
	if len(poison) == 0 && retry == 0 && held == 0 && len(done) == len(rows) {
		if len(later) == 0 {
			return len(rows), done, nil, nil // the next round deletes them
		}
		if err := r.finish(ctx, ex, done); err != nil {
			return len(rows), nil, nil, err
		}
		return len(rows), nil, later, nil
	}
	if len(done) > 0 {
		if err := r.finish(ctx, ex, done); err != nil {
			return len(rows), nil, nil, err
		}
	}
	for _, p := range poison {
		if err := r.moveAside(ctx, ex, p); err != nil {
			return len(rows), nil, nil, err
		}
	}
	if retry > 0 || held > 0 {
		r.failed.Add(uint64(retry))
		r.cFailed.Add(ctx, int64(retry), r.attrs)
		return len(rows), nil, nil, fmt.Errorf("outbox: publish: %d of %d rows not accepted (%d accepted rows after them kept, to be published again in key order): %w",
			retry, len(rows), held, pubErr)
	}
	if ctx.Err() != nil {
		// Groups not published: their rows stay.
		return len(rows), nil, nil, ctx.Err()
	}
	return len(rows), nil, nil, nil
}

// poisonous reports whether a publish error can never go away for this
// message.
func poisonous(err error) bool {
	return transport.IsPermanent(err) || errors.Is(err, transport.ErrInvalidMessage) ||
		errors.Is(err, transport.ErrMessageTooLarge) || errors.Is(err, transport.ErrInvalidTopic)
}

// outcome is what became of one message of a publish: accepted (err nil),
// poison (never publishable), or to be retried.
type outcome struct {
	err    error
	poison bool
}

var errNotSent = errors.New("not sent: an earlier message of its key failed")

// publish sends msgs to topic and returns each one's outcome, with the
// error of those to retry.
func (r *Relay) publish(ctx context.Context, topic string, msgs []*transport.Message) ([]outcome, error) {
	res := make([]outcome, len(msgs))
	ctx, span := r.tracer.Start(ctx, "send "+topic, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("send"),
		semconv.MessagingDestinationName(topic), semconv.MessagingBatchMessageCount(len(msgs))))
	defer span.End()
	if span.IsRecording() {
		for _, m := range msgs {
			if sc := trace.SpanContextFromContext(r.o.prop.Extract(context.Background(), propagation.MapCarrier(m.Header))); sc.IsValid() {
				span.AddLink(trace.Link{SpanContext: sc})
			}
		}
	}
	err := r.pub.Publish(ctx, topic, msgs...)
	if err == nil {
		return res, nil
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	var pe *transport.PublishError
	if errors.As(err, &pe) && len(pe.Failures) > 0 {
		retry := false
		for _, f := range pe.Failures {
			if f.Index < 0 || f.Index >= len(msgs) {
				continue
			}
			res[f.Index] = outcome{err: f.Err, poison: poisonous(f.Err)}
			retry = retry || !res[f.Index].poison
		}
		if !retry {
			err = nil
		}
		return res, err
	}
	if !poisonous(err) || ctx.Err() != nil {
		for i := range res {
			res[i] = outcome{err: err}
		}
		return res, err
	}
	if len(msgs) == 1 {
		res[0] = outcome{err: err, poison: true}
		return res, nil
	}
	// The call failed for a reason one of the messages has: find which,
	// one at a time, in order (a re-send keeps its ID, so brokers that
	// deduplicate drop any the call did send). After a failure that is
	// not poison, the later messages of its key are not sent.
	var errs error
	var failedKeys map[string]bool
	for i, m := range msgs {
		if m.Key != "" && failedKeys[m.Key] {
			res[i] = outcome{err: errNotSent}
			continue
		}
		if err := r.pub.Publish(ctx, topic, m); err != nil {
			res[i] = outcome{err: err, poison: poisonous(err)}
			if !res[i].poison {
				errs = errors.Join(errs, err)
				if failedKeys == nil {
					failedKeys = make(map[string]bool)
				}
				failedKeys[m.Key] = true
			}
		}
	}
	return res, errs
}

// finish deletes the published rows, or archives them for Retention.
func (r *Relay) finish(ctx context.Context, ex execer, ids []int64) error {
	if err := r.finish1(ctx, ex, ids); err != nil {
		return err
	}
	r.published.Add(uint64(len(ids)))
	r.cPublished.Add(ctx, int64(len(ids)), r.attrs)
	return nil
}

func (r *Relay) finish1(ctx context.Context, ex execer, ids []int64) error {
	q := &r.o.q
	if r.o.dialect == PostgreSQL {
		var err error
		lo, hi := pgRanges(ids)
		if r.opts.Retention <= 0 {
			_, err = ex.ExecContext(ctx, q.deleteAny, lo, hi)
		} else {
			_, err = ex.ExecContext(ctx, q.archiveAny, lo, hi, r.o.now().UnixMicro())
		}
		if err != nil {
			return &dbError{fmt.Errorf("outbox: delete %d published rows from %s: %w", len(ids), q.table, err)}
		}
		return nil
	}
	list := idList(ids)
	if r.opts.Retention <= 0 {
		if _, err := ex.ExecContext(ctx, fmt.Sprintf(q.deleteIn, list)); err != nil {
			return &dbError{fmt.Errorf("outbox: delete %d published rows from %s: %w", len(ids), q.table, err)}
		}
		return nil
	}
	tx, err := ex.BeginTx(ctx, nil)
	if err != nil {
		return &dbError{fmt.Errorf("outbox: archive published rows: %w", err)}
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(q.archiveIn, list), r.o.now().UnixMicro()); err != nil {
		return &dbError{fmt.Errorf("outbox: archive %d published rows into %s: %w", len(ids), q.published, err)}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(q.deleteIn, list)); err != nil {
		return &dbError{fmt.Errorf("outbox: delete %d published rows from %s: %w", len(ids), q.table, err)}
	}
	if err := tx.Commit(); err != nil {
		return &dbError{fmt.Errorf("outbox: archive published rows: %w", err)}
	}
	return nil
}

// moveAside moves a poison row to Table_dead and reports it.
func (r *Relay) moveAside(ctx context.Context, ex execer, p Poison) error {
	q := &r.o.q
	tx, err := ex.BeginTx(ctx, nil)
	if err != nil {
		return &dbError{fmt.Errorf("outbox: move row %d aside: %w", p.RowID, err)}
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, q.deadInsert, r.o.now().UnixMicro(), p.Err.Error(), p.RowID); err != nil {
		return &dbError{fmt.Errorf("outbox: move row %d into %s: %w", p.RowID, q.dead, err)}
	}
	if _, err := tx.ExecContext(ctx, q.deadDel, p.RowID); err != nil {
		return &dbError{fmt.Errorf("outbox: move row %d out of %s: %w", p.RowID, q.table, err)}
	}
	if err := tx.Commit(); err != nil {
		return &dbError{fmt.Errorf("outbox: move row %d aside: %w", p.RowID, err)}
	}
	r.poisoned.Add(1)
	r.cPoisoned.Add(ctx, 1, r.attrs)
	r.o.log.Error("outbox: row moved aside: it can never be published", "table", q.table, "dead_table", q.dead,
		"row", p.RowID, "topic", p.Topic, "id", p.ID, "err", p.Err)
	if r.opts.OnPoison != nil {
		r.opts.OnPoison(ctx, p)
	}
	return nil
}

// newOwner is a relay's random lease owner id.
func newOwner() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}
