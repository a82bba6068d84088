// Package shipping is the shipping module: once an order is paid it books
// a parcel and publishes OrderShipped, both in one transaction with the
// inbox record of the PaymentCaptured event.
package shipping

import (
	"context"
	"database/sql"
	"log/slog"
	"time"

	"go.uber.org/fx"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/busfx"
	"github.com/busway/busway/examples/orders/events"
	"github.com/busway/busway/examples/orders/platform"
	"github.com/busway/busway/outbox"
	"github.com/busway/busway/transport"
)

// Group is the module's consumer group.
const Group = "shipping"

var schema = []string{`CREATE TABLE IF NOT EXISTS shipments (
	parcel TEXT PRIMARY KEY,
	order_id TEXT NOT NULL,
	shipped_at INTEGER NOT NULL
)`, `CREATE INDEX IF NOT EXISTS shipments_order ON shipments (order_id)`}

// Module is the shipping module.
var Module = fx.Module("shipping",
	fx.Provide(fx.Private, platform.NewStore("shipping", schema...)),
	fx.Provide(fx.Private, New),
	busfx.Relay(outbox.RelayOptions{}),
	busfx.Subscribe(Group, (*Service).onPaymentCaptured, bus.WithConcurrency(4), bus.WithStartFrom(transport.StartEarliest)),
)

// Service is the module's state.
type Service struct {
	st  *platform.Store
	log *slog.Logger
}

// New returns the Service.
func New(st *platform.Store, tel platform.Telemetry) *Service {
	return &Service{st: st, log: tel.Logger.With("module", "shipping")}
}

func (s *Service) onPaymentCaptured(ctx context.Context, e bus.Event[events.PaymentCaptured]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.PaymentCaptured]) error {
		parcel := "PCL-" + e.Data.OrderID
		if _, err := tx.ExecContext(ctx, `INSERT INTO shipments (parcel, order_id, shipped_at) VALUES (?, ?, ?)`,
			parcel+"-"+e.ID, e.Data.OrderID, time.Now().UnixMicro()); err != nil {
			return err
		}
		return outbox.Publish(ctx, s.st.Outbox, tx, events.OrderShipped{OrderID: e.Data.OrderID, Parcel: parcel},
			bus.WithKey(e.Data.OrderID), bus.WithSubject("orders/"+e.Data.OrderID))
	})(ctx, e)
}
