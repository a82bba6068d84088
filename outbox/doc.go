// Package outbox is the transactional outbox and inbox of busway: an event
// is written into an outbox table in the same database transaction as the
// business change that caused it, and a Relay publishes committed rows to
// any busway transport; on the consuming side, Handler runs a handler in a
// transaction that also records the event in an inbox table, so its
// effects on that database happen once although delivery is at-least-once.
//
// The core uses only database/sql (*sql.DB, *sql.Tx): open the database
// with any driver (PostgreSQL: github.com/jackc/pgx/v5/stdlib; SQLite:
// modernc.org/sqlite). Package pgnotify adds LISTEN/NOTIFY wake-ups and is
// the only part importing a driver.
//
// # API
//
//	ob, err := outbox.New(db, outbox.Options{Dialect: outbox.PostgreSQL, Bus: b})
//	err = ob.Migrate(ctx)                 // idempotent; creates outbox, _dead, _published, inbox tables
//
//	// Producer: the row and the event commit together.
//	err = ob.Transact(ctx, func(tx *sql.Tx) error {
//		if _, err := tx.ExecContext(ctx, "INSERT INTO orders ...", ...); err != nil {
//			return err // rollback: no event
//		}
//		return outbox.Publish(ctx, ob, tx, OrderPlaced{ID: "42"}, bus.WithKey("42"))
//	})
//	// Own transactions: outbox.Publish(ctx, ob, tx, ...), then ob.Commit(tx)
//	// (or tx.Commit() and ob.Wake()), which wakes the relays at once.
//
//	// Relay: in one or more processes.
//	relay, err := outbox.NewRelay(ob, b.Transport(), outbox.RelayOptions{Listener: pgnotify.New(db)})
//	err = relay.Start(ctx)                // ErrNotMigrated when the tables are missing
//	defer relay.Stop(ctx)                 // finishes the round in flight
//
//	// Consumer: effects exactly-once on its database.
//	bus.Subscribe(b, "billing", outbox.Handler(ob, func(ctx context.Context, tx *sql.Tx, e bus.Event[OrderPlaced]) error {
//		_, err := tx.ExecContext(ctx, "INSERT INTO invoices ...", e.Data.ID)
//		return err
//	}))
//
// Publish writes exactly the message bus.Publish would send (it uses
// bus.NewMessage: ce_id, ce_type, ce_source, ce_time, key, subject,
// headers, content type) plus the W3C trace context of ctx. The inbox is
// middleware.SQLStore (ob.Inbox()), the same store middleware.Idempotent
// uses; its Transactional middleware is Handler for raw handlers
// (middleware.TxFromContext gives the transaction).
//
// # Delivery semantics
//
// At-least-once from outbox to broker: the relay deletes (or archives) rows
// only after the transport accepted them, so a crash between publish and
// delete publishes them again, under the same Message.ID (= ce_id). NATS
// JetStream drops such a re-send within its duplicate window; elsewhere the
// inbox (Handler, middleware.Idempotent) makes it harmless.
//
// Nothing committed is skipped: the relay never reads "id > last seen".
// Rows are deleted once published, and each round reads the oldest rows
// still in the table, so a transaction that got its ids early and commits
// late is delivered on the next round. No open transaction is waited for:
// one that holds no outbox row, or whose rows are not committed, delays
// nothing else.
//
// Order: rows of one key are published in id order, which is insert order
// within a transaction and commit order across transactions (serialize
// transactions that must be ordered, as locking the aggregate's row does).
// Order is kept with any number of relays because only one leads: on
// PostgreSQL the relay holds a session advisory lock on a connection of its
// own and runs every round on it; the others block on the lock and take over
// as soon as the leader's session ends (Stop, crash, connection loss). On
// SQLite (one writer), relays take turns through a lease row in
// Table_lease (an owner and an expiry, taken in one statement, renewed
// before each round, freed by Stop): relays of several processes on one
// file are safe, and one whose leader process crashed takes over after
// RelayOptions.LeaseTTL (default 10s). A lease cannot fence a leader that
// stalls for longer than LeaseTTL in the middle of a round (a suspended
// process): it steps down before its next round, but the round in flight
// may overlap the new leader's first one.
//
// Per-key order when a batch fails in part: if the transport accepted some
// messages of a Publish call and not others (a *transport.PublishError),
// the relay deletes only the accepted rows that precede the first failed
// row of their key; that row and the later rows of its key are published
// again, in order, in the next round. So the key's last deliveries are in
// order; but a transport that stored the later messages independently
// (JetStream's asynchronous batch) has delivered them once before the
// failed one, and within its duplicate window JetStream drops their
// re-sends: a consumer that needs strict order under such failures
// checks it (the Seq of an aggregate) or runs the relay with BatchSize 1.
//
// Why a leader and not FOR UPDATE SKIP LOCKED across relays: with SKIP
// LOCKED, a relay cannot see which rows another relay holds, so a key's
// later rows can be published by one relay while its earlier ones are still
// in flight at another (MassTransit's reordering); preventing it needs a
// lock per key and a head-of-key check per row, for no throughput gain: the
// broker and the commits are the limit, and one leader already publishes in
// batches (see the benchmarks in README.md).
//
// Wake-ups: Transact, Commit and Wake wake the relays of this process
// directly, and so does a Handler whose transaction was published into.
// When none of them leads, they also send a NOTIFY (PostgreSQL), outside
// the writer's transaction and coalesced (at most one in flight;
// wakes meanwhile become one more), so writers do not pay a NOTIFY per
// transaction; a relay with a pgnotify Listener wakes on it. Polling
// (RelayOptions.PollInterval, default 100ms) is the fallback for rows
// committed otherwise.
//
// # Performance
//
// On PostgreSQL a backlog costs one statement per batch and one per four
// batches, the latter off the critical path: while a batch is published
// the next four are read on the same connection (one index scan from the
// oldest row, which also walks the entries of the rows deleted before
// until VACUUM removes them: the relay runs one itself every
// RelayOptions.VacuumEvery published rows, at most once a second, instead
// of leaving them to autovacuum's visit once a minute), and once the batch
// went out it is deleted, before the next goes out (so a crash re-sends at
// most one batch). Rows are deleted by ranges of consecutive ids (one index range scan per range), the ranges
// passed as two parameters so that each statement is prepared once. Under a
// stream a round is one statement: it deletes the rows the round before
// published and reads what came meanwhile. The leader's session
// commits asynchronously (synchronous_commit off): its deletes wait for no
// WAL flush; if the server crashes before the flush the rows come back and
// are published again, which at-least-once allows. Under a stream of small
// commits, rounds start at most every RelayOptions.Coalesce (1ms; up to
// 8ms as the rate grows beyond one row per millisecond), so that the
// relay takes several rows per statement and leaves the database and the
// CPU to the writers. The relay reads only the columns it sends and decodes each
// row's headers into one string (two allocations where there were a
// dozen). Figures: BenchmarkPGWriters, BenchmarkPGDrain,
// BenchmarkNATSDrain, BenchmarkSQLiteDrain, BenchmarkPGLatency, each beside
// its raw reference measured in the same call (README.md).
//
// # Tracing
//
// Publish stores the W3C trace context of its ctx in the row's headers, and
// the relay sends the headers as stored, so the consumer's Tracing
// middleware continues the writer's trace. Give the relay the bare
// transport (b.Transport()), not one wrapped in middleware.PublishTracing:
// that wrapper would replace each stored trace context with one of the
// relay's own spans, which start a new trace (the relay's rounds have no
// parent span), and the consumer would lose the writer's trace.
// RelayOptions.TracerProvider gives the relay's own "send <topic>" span per
// batch instead, linked to each message's stored context.
//
// # Errors
//
// A missing table wraps ErrNotMigrated (Publish, Relay.Start, the inbox).
// A transaction already committed wraps ErrTxDone. Bad arguments wrap
// ErrInvalidOptions. While the transport is down the relay backs off
// (RelayOptions.MinBackoff to MaxBackoff) and the rows stay. A row that can
// never be published (corrupt headers, an invalid topic, a message the
// transport rejects as invalid or too large) is moved to Table_dead, logged,
// counted and given to RelayOptions.OnPoison; the rows after it go on.
//
// # Observability
//
// The relay's metrics (OpenTelemetry metric API, RelayOptions.MeterProvider):
// MetricPending and MetricOldestAge (observed from the leader),
// MetricPublished, MetricFailed, MetricPoisoned, each with AttrTable.
// Relay.Stats and Relay.Pending give the same numbers to code.
package outbox
