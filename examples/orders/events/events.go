// Package events is the contract between the modules of the orders
// example: the events they publish and the topics these travel on. It is
// the only package the modules share; none imports another module.
package events

import (
	"time"

	"go.uber.org/fx"

	"github.com/busway/busway/busfx"
)

// The topics: each module publishes to its own.
const (
	TopicOrders    = "orders"    // OrderPlaced, by orders
	TopicPayments  = "payments"  // PaymentCaptured, by billing
	TopicShipments = "shipments" // OrderShipped, by shipping
	// TopicOrdersDLQ holds the OrderPlaced events that a group could not
	// handle (the DeadLetter middleware's "<topic>.dlq").
	TopicOrdersDLQ = "orders.dlq"
)

// OrderPlaced: a customer placed an order. Key: the order ID.
type OrderPlaced struct {
	OrderID  string    `json:"order_id"`
	Customer string    `json:"customer"`
	Cents    int64     `json:"cents"`
	Card     string    `json:"card"`
	PlacedAt time.Time `json:"placed_at"`
}

// PaymentCaptured: billing charged the order. Key: the order ID.
type PaymentCaptured struct {
	OrderID  string `json:"order_id"`
	ChargeID string `json:"charge_id"`
	Cents    int64  `json:"cents"`
	// Attempts is how many calls to the payment provider it took.
	Attempts int `json:"attempts"`
}

// OrderShipped: shipping handed the order's parcel to the carrier. Key:
// the order ID.
type OrderShipped struct {
	OrderID string `json:"order_id"`
	Parcel  string `json:"parcel"`
}

// DeadOrder is an OrderPlaced event as it sits in TopicOrdersDLQ: the same
// event type, so the dead letter decodes as what it was; the reason is in
// its headers (middleware.HeaderDLQError, HeaderDLQGroup).
type DeadOrder OrderPlaced

// EventType is the dead event's original type.
func (DeadOrder) EventType() string { return "OrderPlaced" }

// Module registers every event type with its topic.
var Module = fx.Options(
	busfx.Register[OrderPlaced](TopicOrders),
	busfx.Register[PaymentCaptured](TopicPayments),
	busfx.Register[OrderShipped](TopicShipments),
	busfx.Register[DeadOrder](TopicOrdersDLQ),
)
