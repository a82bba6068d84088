// Package notifications is the notifications module: it mails the
// customer when an order is placed, paid and shipped (here: it records the
// mail in its database, once per event, through the inbox).
package notifications

import (
	"context"
	"database/sql"
	"fmt"
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
const Group = "notifications"

var schema = []string{`CREATE TABLE IF NOT EXISTS mails (
	event_id TEXT PRIMARY KEY,
	order_id TEXT NOT NULL,
	kind TEXT NOT NULL,
	body TEXT NOT NULL,
	sent_at INTEGER NOT NULL
)`}

var subOpts = []bus.SubscribeOption{bus.WithConcurrency(4), bus.WithStartFrom(transport.StartEarliest)}

// Module is the notifications module. It publishes nothing, so it runs no
// relay.
var Module = fx.Module("notifications",
	fx.Provide(fx.Private, platform.NewStore("notifications", schema...)),
	fx.Provide(fx.Private, New),
	busfx.Subscribe(Group, (*Service).onOrderPlaced, subOpts...),
	busfx.Subscribe(Group, (*Service).onPaymentCaptured, subOpts...),
	busfx.Subscribe(Group, (*Service).onOrderShipped, subOpts...),
)

// Service is the module's state.
type Service struct {
	st  *platform.Store
	log *slog.Logger
}

// New returns the Service.
func New(st *platform.Store, tel platform.Telemetry) *Service {
	return &Service{st: st, log: tel.Logger.With("module", "notifications")}
}

func (s *Service) mail(ctx context.Context, tx *sql.Tx, eventID, order, kind, body string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO mails (event_id, order_id, kind, body, sent_at) VALUES (?, ?, ?, ?, ?)`,
		eventID, order, kind, body, time.Now().UnixMicro())
	if err == nil {
		s.log.DebugContext(ctx, "mail sent", "order", order, "kind", kind)
	}
	return err
}

func (s *Service) onOrderPlaced(ctx context.Context, e bus.Event[events.OrderPlaced]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.OrderPlaced]) error {
		return s.mail(ctx, tx, e.ID, e.Data.OrderID, "placed", fmt.Sprintf("Dear %s, we received your order %s.", e.Data.Customer, e.Data.OrderID))
	})(ctx, e)
}

func (s *Service) onPaymentCaptured(ctx context.Context, e bus.Event[events.PaymentCaptured]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.PaymentCaptured]) error {
		return s.mail(ctx, tx, e.ID, e.Data.OrderID, "receipt", fmt.Sprintf("Receipt %s: %d.%02d EUR.", e.Data.ChargeID, e.Data.Cents/100, e.Data.Cents%100))
	})(ctx, e)
}

func (s *Service) onOrderShipped(ctx context.Context, e bus.Event[events.OrderShipped]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.OrderShipped]) error {
		return s.mail(ctx, tx, e.ID, e.Data.OrderID, "shipped", "Your parcel "+e.Data.Parcel+" is on its way.")
	})(ctx, e)
}
