// Package orders is the orders module: an HTTP JSON API to place and read
// orders. Placing an order writes the order row and its OrderPlaced event
// in one SQLite transaction (the outbox); the module follows the order
// through the events of the other modules (PaymentCaptured, OrderShipped,
// a dead-lettered OrderPlaced) to its final state.
package orders

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/busfx"
	"github.com/busway/busway/examples/orders/events"
	"github.com/busway/busway/examples/orders/platform"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/outbox"
	"github.com/busway/busway/transport"
)

// Order statuses. Shipped (paid and shipped) and Failed are final.
const (
	StatusPlaced  = "placed"
	StatusPaid    = "paid"
	StatusShipped = "shipped"
	StatusFailed  = "failed" // dead-lettered: Reason says why
)

// Group is the module's consumer group.
const Group = "orders"

var schema = []string{`CREATE TABLE IF NOT EXISTS orders (
	id TEXT PRIMARY KEY,
	customer TEXT NOT NULL,
	cents INTEGER NOT NULL,
	card TEXT NOT NULL,
	status TEXT NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	attempts INTEGER NOT NULL DEFAULT 0,
	placed_at INTEGER NOT NULL,
	paid_at INTEGER NOT NULL DEFAULT 0,
	shipped_at INTEGER NOT NULL DEFAULT 0,
	final_at INTEGER NOT NULL DEFAULT 0
)`}

// Module is the orders module.
var Module = fx.Module("orders",
	fx.Provide(fx.Private, platform.NewStore("orders", schema...)),
	fx.Provide(fx.Private, New),
	busfx.Relay(outbox.RelayOptions{}),
	busfx.Subscribe(Group, (*Service).onPaymentCaptured, subOpts...),
	busfx.Subscribe(Group, (*Service).onOrderShipped, subOpts...),
	busfx.Subscribe(Group, (*Service).onDeadOrder, subOpts...),
	fx.Invoke((*Service).routes),
)

var subOpts = []bus.SubscribeOption{bus.WithConcurrency(4), bus.WithStartFrom(transport.StartEarliest)}

// Order is an order as the API returns it.
type Order struct {
	ID       string     `json:"id"`
	Customer string     `json:"customer"`
	Cents    int64      `json:"cents"`
	Card     string     `json:"card,omitempty"`
	Status   string     `json:"status"`
	Reason   string     `json:"reason,omitempty"`
	Attempts int        `json:"payment_attempts,omitempty"`
	PlacedAt time.Time  `json:"placed_at"`
	PaidAt   *time.Time `json:"paid_at,omitempty"`
	FinalAt  *time.Time `json:"final_at,omitempty"`
}

// Service is the module's state.
type Service struct {
	st     *platform.Store
	log    *slog.Logger
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

// New returns the Service.
func New(st *platform.Store, tel platform.Telemetry) *Service {
	return &Service{st: st, log: tel.Logger.With("module", "orders"), tracer: tel.Tracer.Tracer("orders"), prop: tel.Propagator}
}

func (s *Service) routes(r platform.Routes) {
	r.Handle("POST /orders", s.traced("POST /orders", s.place))
	r.Handle("GET /orders/{id}", s.traced("GET /orders/{id}", s.get))
	r.Handle("GET /orders", s.traced("GET /orders", s.list))
}

// traced runs h in a server span that continues the caller's trace
// (traceparent header): the span every module's work of a placed order
// descends from.
func (s *Service) traced(route string, h func(w http.ResponseWriter, r *http.Request) (int, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := s.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := s.tracer.Start(ctx, route, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("http.route", route)))
		defer span.End()
		code, err := h(w, r.WithContext(ctx))
		span.SetAttributes(attribute.Int("http.response.status_code", code))
		if err != nil {
			if code >= 500 {
				span.SetStatus(codes.Error, err.Error())
				s.log.ErrorContext(ctx, "request failed", "route", route, "err", err)
			}
			writeJSON(w, code, map[string]string{"error": err.Error()})
		}
	})
}

// PlaceRequest is the body of POST /orders. ID is optional: a client that
// sets it may retry the request safely (the same ID places one order).
type PlaceRequest struct {
	ID       string `json:"id,omitempty"`
	Customer string `json:"customer"`
	Cents    int64  `json:"cents"`
	Card     string `json:"card"`
}

func (s *Service) place(w http.ResponseWriter, r *http.Request) (int, error) {
	var req PlaceRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return http.StatusBadRequest, fmt.Errorf("bad order: %v", err)
	}
	switch {
	case strings.TrimSpace(req.Customer) == "":
		return http.StatusBadRequest, errors.New("bad order: customer is required")
	case req.Cents <= 0:
		return http.StatusBadRequest, fmt.Errorf("bad order: cents must be positive, not %d", req.Cents)
	case strings.TrimSpace(req.Card) == "":
		return http.StatusBadRequest, errors.New("bad order: card is required")
	case len(req.ID) > 64:
		return http.StatusBadRequest, errors.New("bad order: id longer than 64 bytes")
	}
	if req.ID == "" {
		req.ID = uuid.Must(uuid.NewV7()).String()
	}
	ctx := r.Context()
	now := time.Now().UTC()
	created := false
	err := s.st.Outbox.Transact(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO orders (id, customer, cents, card, status, placed_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			req.ID, req.Customer, req.Cents, req.Card, StatusPlaced, now.UnixMicro())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil // placed before: a retried request
		}
		created = true
		return outbox.Publish(ctx, s.st.Outbox, tx, events.OrderPlaced{
			OrderID: req.ID, Customer: req.Customer, Cents: req.Cents, Card: req.Card, PlacedAt: now,
		}, bus.WithKey(req.ID), bus.WithSubject("orders/"+req.ID))
	})
	if err != nil {
		return http.StatusInternalServerError, fmt.Errorf("place order: %w", err)
	}
	o, err := s.order(ctx, req.ID)
	if err != nil {
		return http.StatusInternalServerError, err
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
		s.log.InfoContext(ctx, "order placed", "order", o.ID, "cents", o.Cents)
	}
	writeJSON(w, code, o)
	return code, nil
}

func (s *Service) get(w http.ResponseWriter, r *http.Request) (int, error) {
	o, err := s.order(r.Context(), r.PathValue("id"))
	if errors.Is(err, sql.ErrNoRows) {
		return http.StatusNotFound, fmt.Errorf("no order %q", r.PathValue("id"))
	}
	if err != nil {
		return http.StatusInternalServerError, err
	}
	writeJSON(w, http.StatusOK, o)
	return http.StatusOK, nil
}

// List is the body of GET /orders.
type List struct {
	Counts map[string]int `json:"counts"` // orders per status
	Orders []Order        `json:"orders"`
}

func (s *Service) list(w http.ResponseWriter, r *http.Request) (int, error) {
	// ?prefix=ID-PREFIX lists the orders whose ID starts with it.
	p := r.URL.Query().Get("prefix")
	rows, err := s.st.DB.QueryContext(r.Context(), `SELECT `+cols+` FROM orders WHERE substr(id, 1, length(?)) = ? ORDER BY placed_at, id`, p, p)
	if err != nil {
		return http.StatusInternalServerError, err
	}
	defer rows.Close()
	l := List{Counts: map[string]int{}, Orders: []Order{}}
	for rows.Next() {
		o, err := scan(rows)
		if err != nil {
			return http.StatusInternalServerError, err
		}
		l.Counts[o.Status]++
		l.Orders = append(l.Orders, o)
	}
	if err := rows.Err(); err != nil {
		return http.StatusInternalServerError, err
	}
	writeJSON(w, http.StatusOK, l)
	return http.StatusOK, nil
}

const cols = `id, customer, cents, card, status, reason, attempts, placed_at, paid_at, final_at`

func (s *Service) order(ctx context.Context, id string) (Order, error) {
	return scan(s.st.DB.QueryRowContext(ctx, `SELECT `+cols+` FROM orders WHERE id = ?`, id))
}

func scan(r interface{ Scan(...any) error }) (Order, error) {
	var o Order
	var placed, paid, final int64
	if err := r.Scan(&o.ID, &o.Customer, &o.Cents, &o.Card, &o.Status, &o.Reason, &o.Attempts, &placed, &paid, &final); err != nil {
		return Order{}, err
	}
	o.Card = mask(o.Card)
	o.PlacedAt = time.UnixMicro(placed).UTC()
	if paid != 0 {
		t := time.UnixMicro(paid).UTC()
		o.PaidAt = &t
	}
	if final != 0 {
		t := time.UnixMicro(final).UTC()
		o.FinalAt = &t
	}
	return o, nil
}

// mask shows the last four digits of a card number.
func mask(card string) string {
	if len(card) <= 4 {
		return card
	}
	return "…" + card[len(card)-4:]
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// The handlers follow an order to its final state. Each runs in a
// transaction that also records the event in the module's inbox, so a
// redelivered event changes nothing. PaymentCaptured and OrderShipped
// travel on different topics, so the orders group may get them in either
// order: the order is final (shipped) once both arrived.

func (s *Service) onPaymentCaptured(ctx context.Context, e bus.Event[events.PaymentCaptured]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.PaymentCaptured]) error {
		now := time.Now().UnixMicro()
		_, err := tx.ExecContext(ctx, `UPDATE orders SET paid_at = ?, attempts = ?,
			status = CASE WHEN shipped_at != 0 THEN ? ELSE ? END,
			final_at = CASE WHEN shipped_at != 0 THEN ? ELSE 0 END
			WHERE id = ? AND final_at = 0`,
			now, e.Data.Attempts, StatusShipped, StatusPaid, now, e.Data.OrderID)
		return err
	})(ctx, e)
}

func (s *Service) onOrderShipped(ctx context.Context, e bus.Event[events.OrderShipped]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.OrderShipped]) error {
		now := time.Now().UnixMicro()
		_, err := tx.ExecContext(ctx, `UPDATE orders SET shipped_at = ?,
			status = CASE WHEN paid_at != 0 THEN ? ELSE status END,
			final_at = CASE WHEN paid_at != 0 THEN ? ELSE 0 END
			WHERE id = ? AND final_at = 0`,
			now, StatusShipped, now, e.Data.OrderID)
		if err == nil {
			s.log.InfoContext(ctx, "order shipped", "order", e.Data.OrderID, "parcel", e.Data.Parcel)
		}
		return err
	})(ctx, e)
}

// onDeadOrder marks an order whose OrderPlaced a group dead-lettered as
// failed, with the reason the DeadLetter middleware recorded.
func (s *Service) onDeadOrder(ctx context.Context, e bus.Event[events.DeadOrder]) error {
	return outbox.Handler(s.st.Outbox, func(ctx context.Context, tx *sql.Tx, e bus.Event[events.DeadOrder]) error {
		reason := e.Header[middleware.HeaderDLQGroup] + ": " + e.Header[middleware.HeaderDLQError]
		_, err := tx.ExecContext(ctx, `UPDATE orders SET status = ?, reason = ?, final_at = ? WHERE id = ? AND final_at = 0`,
			StatusFailed, reason, time.Now().UnixMicro(), e.Data.OrderID)
		if err == nil {
			s.log.WarnContext(ctx, "order failed", "order", e.Data.OrderID, "reason", reason)
		}
		return err
	})(ctx, e)
}
