package busfx

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"

	"go.uber.org/fx"

	"github.com/busway/busway"
	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// Module provides Config (from the environment, LoadConfig), the
// transport.Transport that Config.URL names and the *bus.Bus on it, and
// ties them to the fx lifecycle (see the package doc). It takes, when the
// app provides them, a *slog.Logger, a Middleware, a PublishMiddleware,
// BusOptions and a *transport.Mux; it provides nothing else.
var Module = fx.Module("busway",
	fx.Provide(LoadConfig, NewTransport, NewBus),
)

// Middleware is the bus's consume-side middleware chain, outermost first
// (bus.WithMiddleware): an explicit ordered list, never an fx value group,
// whose order would be random. Provide one value of it, for example
//
//	fx.Provide(func(t transport.Transport) busfx.Middleware {
//		return busfx.Middleware{middleware.Tracing(...), middleware.DeadLetter(t, ...), middleware.Retry(...), middleware.Recover()}
//	})
type Middleware []middleware.Middleware

// PublishMiddleware is the bus's publish-side middleware, outermost first
// (bus.WithPublishMiddleware).
type PublishMiddleware []middleware.PublisherMiddleware

// BusOptions are further options of bus.New (a codec, a fallback handler),
// applied after those the Module derives from Config and its Params.
type BusOptions []bus.Option

// TransportParams are what NewTransport takes.
type TransportParams struct {
	fx.In
	Config    Config
	Lifecycle fx.Lifecycle
	// Mux opens Config.URL. Default busway.NewMux(): chan, nats, kafka.
	Mux *transport.Mux `optional:"true"`
}

// TransportResult is what NewTransport provides.
type TransportResult struct {
	fx.Out
	Transport transport.Transport
}

// NewTransport provides the transport Config.URL names. It fails at once
// (fx.New's error) for a URL whose scheme the mux does not know, and opens
// the transport in OnStart, failing start-up with the transport's error
// (naming the bad host, option, ...) when it cannot. OnStop closes it
// unless the bus already did.
func NewTransport(p TransportParams) (TransportResult, error) {
	if err := p.Config.Validate(); err != nil {
		return TransportResult{}, err
	}
	mux := p.Mux
	if mux == nil {
		mux = busway.NewMux()
	}
	if err := checkScheme(mux, p.Config); err != nil {
		return TransportResult{}, err
	}
	l := newLazy(mux, p.Config)
	p.Lifecycle.Append(fx.Hook{
		OnStart: l.open,
		OnStop: func(context.Context) error {
			if first, err := l.close(); first {
				return err
			}
			return nil // closed by the bus's shutdown, which reported its error
		},
	})
	return TransportResult{Transport: l}, nil
}

func checkScheme(mux *transport.Mux, c Config) error {
	u, err := url.Parse(c.url())
	if err != nil {
		return fmt.Errorf("busway: %w: %s: %v", ErrInvalidConfig, EnvURL, err)
	}
	scheme := u.Scheme
	for _, s := range mux.Schemes() {
		if s == scheme {
			return nil
		}
	}
	return fmt.Errorf("busway: %w: %s=%q: unknown scheme %q (known: %v)", ErrInvalidConfig, EnvURL, c.Redacted(), scheme, mux.Schemes())
}

// Params are what NewBus takes.
type Params struct {
	fx.In
	Config            Config
	Transport         transport.Transport
	Lifecycle         fx.Lifecycle
	Logger            *slog.Logger      `optional:"true"`
	Middleware        Middleware        `optional:"true"`
	PublishMiddleware PublishMiddleware `optional:"true"`
	Options           BusOptions        `optional:"true"`
	// Types are the type -> topic registrations of Register, applied before
	// any handler subscribes or event is published.
	Types []Registration `group:"busway.types"`
}

// Result is what NewBus provides.
type Result struct {
	fx.Out
	Bus    *bus.Bus
	Runner *Runner
}

// NewBus provides the *bus.Bus on the Module's transport, with the
// middleware and options of Params, and the Runner that starts and stops
// it. It fails (fx.New's error) when an option is invalid, naming it.
func NewBus(p Params) (Result, error) {
	opts := []bus.Option{bus.WithLogger(p.Logger)}
	if p.Config.Source != "" {
		opts = append(opts, bus.WithSource(p.Config.Source))
	}
	if len(p.Middleware) > 0 {
		opts = append(opts, bus.WithMiddleware(p.Middleware...))
	}
	if len(p.PublishMiddleware) > 0 {
		opts = append(opts, bus.WithPublishMiddleware(p.PublishMiddleware...))
	}
	opts = append(opts, p.Options...)
	b := bus.New(p.Transport, opts...)
	if err := b.Err(); err != nil {
		return Result{}, err // names busway and the bad option
	}
	for _, r := range p.Types {
		if err := r.apply(b); err != nil {
			return Result{}, err
		}
	}
	r := &Runner{b: b, timeout: p.Config.shutdownTimeout()}
	if l, ok := p.Transport.(*lazyTransport); ok {
		r.lazy = l
	}
	// The bus's own hook: starts it when no Subscribe option will (a
	// publish-only app), and shuts it down if nothing else did.
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			if r.hooks == 0 {
				return r.start(ctx)
			}
			return nil
		},
		OnStop: r.shutdown,
	})
	return Result{Bus: b, Runner: r}, nil
}
