package busfx

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/fx"

	"github.com/busway/busway/bus"
)

// Runner starts and stops the Module's bus. Subscribe options give it
// one lifecycle hook each; only the hook appended last acts, so the bus
// starts after every handler is registered and after every service a
// handler uses has started, and it shuts down before any of those stop.
// Apps do not call it; it is provided so that Subscribe can find it.
type Runner struct {
	b       *bus.Bus
	lazy    *lazyTransport // nil when the app decorated the transport
	timeout time.Duration
	hooks   int // Subscribe hooks appended (fx runs invokes one at a time)
	// started: the bus started; later holds what waits for that (relays).
	// fx runs hooks one at a time, so these need no lock.
	started bool
	later   []func(context.Context) error
}

// start starts the bus and then what waited for it. If one of those fails
// it shuts the bus down again: fx does not call the OnStop of a hook whose
// OnStart failed.
func (r *Runner) start(ctx context.Context) error {
	if err := r.b.Start(ctx); err != nil {
		return err
	}
	r.started = true
	for _, f := range r.later {
		if err := f(ctx); err != nil {
			return errors.Join(err, r.shutdown(ctx))
		}
	}
	r.later = nil
	return nil
}

// afterStart runs f now if the bus started, else once it did.
func (r *Runner) afterStart(ctx context.Context, f func(context.Context) error) error {
	if r.started {
		return f(ctx)
	}
	r.later = append(r.later, f)
	return nil
}

// shutdown stops the bus within the shutdown timeout: it stops fetching,
// drains in-flight handlers, commits, and then closes the transport, which
// first stops the outbox relays.
func (r *Runner) shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.b.Shutdown(ctx)
}

func (r *Runner) hook() fx.Hook {
	r.hooks++
	i := r.hooks
	return fx.Hook{
		OnStart: func(ctx context.Context) error {
			if i != r.hooks {
				return nil
			}
			return r.start(ctx)
		},
		OnStop: func(ctx context.Context) error {
			if i != r.hooks {
				return nil
			}
			return r.shutdown(ctx)
		},
	}
}

// Subscribe returns an fx option that subscribes method of the service S,
// which the app provides, to the events of type T in group:
//
//	busfx.Subscribe("billing", (*billing.Service).OnOrderPlaced)
//
// S is constructed by fx (with whatever it depends on, the *bus.Bus
// included); method is usually a method expression. Several Subscribe
// options may name one group and topic with different event types: they
// share one transport subscription that dispatches by type, and options
// that belong to the (topic, group), such as bus.WithConcurrency, must
// agree. The bus starts once every Subscribe option has run, in OnStart,
// after the services the handlers use have started; it stops, draining
// their in-flight calls, before those services stop.
func Subscribe[S, T any](group string, method func(S, context.Context, bus.Event[T]) error, opts ...bus.SubscribeOption) fx.Option {
	if method == nil {
		return fx.Error(fmt.Errorf("busway: busfx.Subscribe(%q): nil method", group))
	}
	return fx.Invoke(func(svc S, b *bus.Bus, r *Runner, lc fx.Lifecycle) error {
		h := func(ctx context.Context, e bus.Event[T]) error { return method(svc, ctx, e) }
		if _, err := bus.Subscribe(b, group, h, opts...); err != nil {
			return err // names busway, the group and the type
		}
		lc.Append(r.hook())
		return nil
	})
}

// SubscribeFunc is Subscribe for a handler that needs no service.
func SubscribeFunc[T any](group string, fn func(context.Context, bus.Event[T]) error, opts ...bus.SubscribeOption) fx.Option {
	if fn == nil {
		return fx.Error(fmt.Errorf("busway: busfx.SubscribeFunc(%q): nil handler", group))
	}
	return fx.Invoke(func(b *bus.Bus, r *Runner, lc fx.Lifecycle) error {
		if _, err := bus.Subscribe(b, group, fn, opts...); err != nil {
			return err
		}
		lc.Append(r.hook())
		return nil
	})
}

// Registration is a type -> topic mapping made by Register.
type Registration struct{ apply func(*bus.Bus) error }

// Register returns an fx option that maps the event type T to topic
// (bus.Register) when the bus is built, before any handler subscribes or
// event is published, wherever the option appears. Registrations are a
// set, so they travel in an fx value group, unlike middleware.
func Register[T any](topic string) fx.Option {
	return fx.Provide(fx.Annotate(
		func() Registration { return Registration{func(b *bus.Bus) error { return bus.Register[T](b, topic) }} },
		fx.ResultTags(`group:"busway.types"`),
	))
}
