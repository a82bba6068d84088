package busfx

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/metric"
	"go.uber.org/fx"

	"github.com/busway/busway/outbox"
	"github.com/busway/busway/transport"
)

type relayParams struct {
	fx.In
	Outbox        *outbox.Outbox
	Transport     transport.Transport
	Runner        *Runner
	Lifecycle     fx.Lifecycle
	MeterProvider metric.MeterProvider `optional:"true"`
}

// Relay returns an fx option that runs an outbox relay of the
// *outbox.Outbox in its scope (provide it with fx.Private in a module, so
// that each module relays its own database) to the Module's transport.
//
// The relay starts in OnStart, after the outbox's constructor's hooks (its
// migration) ran and after the bus started its subscriptions, so that
// what it publishes finds them (chanbus drops messages of a topic nobody
// subscribes to). At shutdown it stops after the bus drained its
// handlers, which may still write outbox rows, and before the transport
// closes; in any case before the outbox's database closes (its own OnStop
// hook, which fx runs before the hooks of what it depends on). Rows it
// did not publish stay and are published at the next start.
//
// Its metrics go to opts.MeterProvider, else to the app's
// metric.MeterProvider when it provides one, else to the global one.
//
// It publishes to the transport, not through the bus's publish
// middleware: each row already carries the trace context of the
// transaction that wrote it, which a publish-side Tracing would replace.
func Relay(opts outbox.RelayOptions) fx.Option {
	return fx.Invoke(func(p relayParams) error {
		ob, t, run, lc := p.Outbox, p.Transport, p.Runner, p.Lifecycle
		o := opts // the option may serve several apps: each gets its own provider
		if o.MeterProvider == nil {
			o.MeterProvider = p.MeterProvider // nil: the global one
		}
		r, err := outbox.NewRelay(ob, t, o)
		if err != nil {
			return fmt.Errorf("busway: relay of %s: %w", ob.Table(), err)
		}
		stop := func(ctx context.Context) error {
			err := r.Stop(ctx)
			if testHookRelayStopped != nil {
				testHookRelayStopped()
			}
			if err != nil {
				return fmt.Errorf("busway: stop relay of %s: %w", ob.Table(), err)
			}
			return nil
		}
		if l, ok := t.(*lazyTransport); ok {
			l.beforeClose(stop)
		}
		lc.Append(fx.Hook{OnStart: func(ctx context.Context) error { return run.afterStart(ctx, r.Start) }, OnStop: stop})
		return nil
	})
}

// testHookRelayStopped, when set by a test, runs after each relay stop.
var testHookRelayStopped func()
