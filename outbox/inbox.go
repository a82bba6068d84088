package outbox

import (
	"context"
	"database/sql"
	"sync/atomic"

	"github.com/busway/busway/bus"
)

// Handler makes a bus handler that runs h inside a transaction of o's
// database which also records the event in the inbox (o.Inbox(), keyed by
// the handler's group and the event ID, ce_id): h's writes and the record
// commit together or not at all. An event already recorded for the group
// is acknowledged without calling h. An error of h rolls back and is
// returned (the event is delivered again). h may Publish into tx, so that
// consuming, updating and emitting are one atomic step; the relays are
// woken when a transaction that was published into commits.
//
//	bus.Subscribe(b, "billing", outbox.Handler(ob, func(ctx context.Context, tx *sql.Tx, e bus.Event[OrderPlaced]) error {
//		_, err := tx.ExecContext(ctx, "INSERT INTO invoices (order_id) VALUES ($1)", e.Data.ID)
//		return err
//	}))
func Handler[T any](o *Outbox, h func(ctx context.Context, tx *sql.Tx, e bus.Event[T]) error) func(context.Context, bus.Event[T]) error {
	return func(ctx context.Context, e bus.Event[T]) error {
		var published atomic.Bool
		_, err := o.inbox.HandleTx(ctx, e.Group, e.ID, func(tx *sql.Tx) error {
			o.handling.Store(tx, &published)
			defer o.handling.Delete(tx)
			return h(ctx, tx, e)
		})
		if err == nil && published.Load() {
			o.Wake()
		}
		return err
	}
}
