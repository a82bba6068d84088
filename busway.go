// Package busway opens a transport from one configuration string, so a
// program swaps its broker by configuration:
//
//	t, err := busway.Open(ctx, os.Getenv("BUS_URL")) // chan://, nats://..., kafka://...
//	if err != nil { ... }
//	b := bus.New(t)
//
// It is the one place that knows every transport: it builds a transport.Mux
// with the "chan", "nats" and "kafka" schemes. There is no global mux and no
// registration in init(); a program that wants fewer transports (and fewer
// dependencies) builds its own transport.Mux from the openers it needs.
//
// # URLs
//
//	chan://                                        in-process Go channels (not durable)
//	nats://host:4222[,host2:4222]?stream=ORDERS    NATS JetStream
//	nats://embedded?store_dir=/var/lib/app/nats    an embedded JetStream server
//	kafka://host1:9092,host2:9092?partitions=6     Kafka
//
// Each transport's package documents its query options; an unknown option,
// a malformed URL or an unknown scheme is an error naming the offending part.
package busway

import (
	"context"
	"log/slog"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
	"github.com/busway/busway/transport/kafka"
	"github.com/busway/busway/transport/nats"
)

// DefaultURL is what Open uses for an empty URL: the in-process transport.
const DefaultURL = "chan://"

// Option configures NewMux.
type Option func(*options)

type options struct{ log *slog.Logger }

// WithLogger gives the transports that the Mux opens a logger for their
// own events (connections, rebalances, redeliveries, dropped messages):
// chanbus.URLOpener, nats.URLOpener and kafka.URLOpener's Logger. Give the
// bus the same one (bus.WithLogger), which logs handler panics and its
// lifecycle. Default: nil, which discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// NewMux returns a new Mux with the chan, nats and kafka openers.
func NewMux(opts ...Option) *transport.Mux {
	var c options
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	var m transport.Mux
	for scheme, o := range map[string]transport.Opener{
		chanbus.Scheme: &chanbus.URLOpener{Logger: c.log},
		nats.Scheme:    &nats.URLOpener{Logger: c.log},
		kafka.Scheme:   &kafka.URLOpener{Logger: c.log},
	} {
		if err := m.Register(scheme, o); err != nil {
			panic("busway: " + err.Error()) // unreachable: fixed, valid schemes
		}
	}
	return &m
}

// Open opens the transport rawURL names; an empty rawURL means DefaultURL.
// Its transports log nothing; for a logger, open with
// NewMux(WithLogger(l)).Open(ctx, rawURL).
func Open(ctx context.Context, rawURL string) (transport.Transport, error) {
	if rawURL == "" {
		rawURL = DefaultURL
	}
	return NewMux().Open(ctx, rawURL)
}
