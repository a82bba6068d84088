// Package billing is the billing module: it charges each placed order
// through a payment provider and publishes PaymentCaptured. The provider
// fails some calls transiently (retried in place by the Retry middleware);
// a stolen card is a permanent failure, which the DeadLetter middleware
// parks on the dead-letter topic with its reason. The charge row, the
// inbox record of the OrderPlaced event and the PaymentCaptured event
// commit in one transaction: however often an event is delivered, an
// order is charged once.
package billing

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
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
const Group = "billing"

// StolenCard is the card number the provider always declines: orders
// paid with it are poison, dead-lettered at once.
const StolenCard = "4000000000000002"

var schema = []string{`CREATE TABLE IF NOT EXISTS charges (
	id INTEGER PRIMARY KEY AUTOINCREMENT, -- a duplicate charge would be a second row
	charge_id TEXT NOT NULL,
	order_id TEXT NOT NULL,
	cents INTEGER NOT NULL,
	attempts INTEGER NOT NULL,
	charged_at INTEGER NOT NULL
)`, `CREATE INDEX IF NOT EXISTS charges_order ON charges (order_id)`}

// Module is the billing module.
var Module = fx.Module("billing",
	fx.Provide(fx.Private, platform.NewStore("billing", schema...)),
	fx.Provide(fx.Private, NewProvider, New),
	busfx.Relay(outbox.RelayOptions{}),
	busfx.Subscribe(Group, (*Service).onOrderPlaced, bus.WithConcurrency(4), bus.WithStartFrom(transport.StartEarliest)),
)

// Service is the module's state.
type Service struct {
	st  *platform.Store
	pp  *Provider
	log *slog.Logger
}

// New returns the Service.
func New(st *platform.Store, pp *Provider, tel platform.Telemetry) *Service {
	return &Service{st: st, pp: pp, log: tel.Logger.With("module", "billing")}
}

func (s *Service) onOrderPlaced(ctx context.Context, e bus.Event[events.OrderPlaced]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.OrderPlaced]) error {
		o := e.Data
		chargeID, attempts, err := s.pp.Charge(ctx, o.OrderID, o.Card, o.Cents)
		if err != nil {
			s.log.WarnContext(ctx, "payment failed", "order", o.OrderID, "attempt", attempts, "err", err)
			return err // transient: retried; permanent: dead-lettered
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO charges (charge_id, order_id, cents, attempts, charged_at) VALUES (?, ?, ?, ?, ?)`,
			chargeID, o.OrderID, o.Cents, attempts, time.Now().UnixMicro()); err != nil {
			return err
		}
		return outbox.Publish(ctx, s.st.Outbox, tx, events.PaymentCaptured{
			OrderID: o.OrderID, ChargeID: chargeID, Cents: o.Cents, Attempts: attempts,
		}, bus.WithKey(o.OrderID), bus.WithSubject("orders/"+o.OrderID))
	})(ctx, e)
}

// ErrDeclined is the provider's answer for a card it will never charge.
var ErrDeclined = errors.New("card declined")

// ErrUnavailable is the provider's transient failure.
var ErrUnavailable = errors.New("payment provider unavailable (timeout)")

// Provider stands for a payment provider behind a network: it fails the
// first call for one order in four and the first two calls for one in
// sixteen (transient: a retry succeeds), and declines StolenCard for good.
// Its charges are idempotent per order, as real providers' are with an
// idempotency key, so a charge whose recording transaction rolled back is
// not taken twice from the card either.
type Provider struct {
	mu    sync.Mutex
	calls map[string]int
}

// NewProvider returns a Provider.
func NewProvider() *Provider { return &Provider{calls: map[string]int{}} }

// Charge charges cents for order and returns the charge ID and the number
// of calls it took for this order.
func (p *Provider) Charge(ctx context.Context, order, card string, cents int64) (string, int, error) {
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	p.mu.Lock()
	p.calls[order]++
	n := p.calls[order]
	p.mu.Unlock()
	if card == StolenCard {
		return "", n, bus.Permanent(fmt.Errorf("%w: card …%s reported stolen", ErrDeclined, card[len(card)-4:]))
	}
	h := fnv.New32a()
	h.Write([]byte(order))
	failures := 0
	switch v := h.Sum32(); {
	case v%16 == 0:
		failures = 2
	case v%4 == 0:
		failures = 1
	}
	if n <= failures {
		return "", n, ErrUnavailable
	}
	return "ch_" + order, n, nil
}
