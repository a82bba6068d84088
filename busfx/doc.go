// Package busfx wires busway into an go.uber.org/fx application: config
// from the environment -> transport (through the URL mux of package
// busway) -> *bus.Bus, tied to the fx lifecycle, with typed handlers
// registered from services the app constructs.
//
//	fx.New(
//		busfx.Module, // Config from BUS_URL, BUS_SOURCE, BUS_SHUTDOWN_TIMEOUT
//		fx.Provide(billing.New),
//		busfx.Register[OrderPlaced]("orders"),
//		busfx.Subscribe("billing", (*billing.Service).OnOrderPlaced),
//		fx.Supply(busfx.Middleware{middleware.Retry(middleware.RetryOptions{}), middleware.Recover()}),
//		busfx.Relay(outbox.RelayOptions{}), // relays the *outbox.Outbox the app provides
//	).Run()
//
// The Module is thin and everything it wires is usable without fx: it
// calls busway.NewMux().Open and bus.New with the options it was given.
// It provides Config, transport.Transport, *bus.Bus and a *Runner, and
// nothing it does not own: no logger, tracer or meter (it uses a
// *slog.Logger when the app provides one).
//
// # Configuration
//
//	BUS_URL               chan:// (default), nats://host:4222, nats://embedded?store_dir=DIR, kafka://host:9092
//	BUS_SOURCE            the CloudEvents source of published events (default: the program name)
//	BUS_SHUTDOWN_TIMEOUT  bound on draining at shutdown, a Go duration (default 30s)
//
// A bad value fails fx.New with an error that names the variable and the
// value (an unknown scheme, a duration that does not parse); a URL that
// parses but that its transport rejects (a bad option, an unreachable
// host) fails start-up with the transport's error, which names the
// offending part. fx.Replace(busfx.Config{...}) configures in code.
//
// # Lifecycle
//
// Constructors only build: the transport opens in OnStart. Start-up, in
// order: the transport opens; the services the handlers use start (their
// own hooks); then the bus starts every subscription, once every
// Subscribe option has registered its handler, so no handler misses an
// event. Shutdown runs the other way: the bus stops fetching, lets
// in-flight handlers finish (within BUS_SHUTDOWN_TIMEOUT and the fx stop
// deadline), acknowledges and commits what finished, stops the outbox
// relays (Relay), and closes the transport; only then do the services the
// handlers used (a database) stop. Hooks of code that starts after the
// last Subscribe option (an HTTP server that publishes) stop before the
// bus does.
//
// # Middleware
//
// The consume-side chain is one Middleware value, an ordered list, first
// outermost; PublishMiddleware likewise. They are never fx value groups,
// whose order is unspecified. Register, a set of type -> topic mappings,
// is a value group.
package busfx
