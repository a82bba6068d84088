package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/busway/busway/internal/bushook"
	"github.com/busway/busway/transport"
)

// Bus is the typed event bus on one transport. Create it with New, register
// types and subscribe handlers, Start it, and Shutdown when done. A Bus is
// safe for concurrent use.
type Bus struct {
	t         transport.Transport
	pub       transport.Publisher // t wrapped in the publish middleware
	source    string
	codec     Codec
	mw        []func(transport.Handler) transport.Handler
	handlerMW []func(transport.Handler) transport.Handler
	log       *slog.Logger
	fallback  transport.Handler
	settle    func(context.Context) error // bushook.LiveSubscribe
	system    string                      // transport.SystemOf(t)
	// recycle: Publish recycles its messages (publishRecycled), as pub
	// keeps nothing of them (a transport.PublishCopier with no publish
	// middleware) and the codec is JSON.
	recycle bool
	err     error // an invalid argument of New, returned by every call

	state atomic.Int32 // stateNew, stateStarted, stateDraining, stateClosed

	tmu   sync.RWMutex
	types map[reflect.Type]*typeInfo
	// lastType is the typeInfo typeOf returned last (typeInfos do not
	// change once made): a Publish of the type published before finds it
	// without the read lock and the map look-up.
	lastType atomic.Pointer[typeInfo]

	mu       sync.Mutex // routes, state changes, Start, Shutdown
	routes   map[routeKey]*route
	shutdown chan struct{} // closed when Shutdown finished
	shutErr  error

	published, handled, failed, unknown, fellBack atomic.Uint64
}

const (
	stateNew int32 = iota
	stateStarted
	stateDraining // Shutdown is draining subscriptions: Publish still works
	stateClosed
)

// typeInfo is what the Bus knows of one Go event type.
type typeInfo struct {
	rt    reflect.Type
	name  string // event type name
	topic string
	flat  *flatJSON // the JSON encoder of rt when it is a flat struct, else nil
}

// Option configures a Bus. The zero configuration is the default.
type Option func(*config)

type config struct {
	source    string
	codec     Codec
	mw        []func(transport.Handler) transport.Handler
	handlerMW []func(transport.Handler) transport.Handler
	pubMW     []func(transport.Publisher) transport.Publisher
	log       *slog.Logger
	fallback  transport.Handler
	settle    func(context.Context) error
	errs      []error
}

func init() {
	bushook.LiveSubscribe = func(settle func(context.Context) error) any {
		return Option(func(c *config) { c.settle = settle })
	}
}

// WithSource sets the CloudEvents source of published events, a URI
// reference such as "orders-svc" or "/services/orders"; an empty source, or
// one a transport would change (a line break, white space at an end; see
// WithKey), is an invalid option. Default: the base name of the program
// (os.Args[0]).
func WithSource(source string) Option {
	return func(c *config) {
		if source == "" {
			c.errs = append(c.errs, fmt.Errorf("%w: WithSource: empty source", ErrInvalidOptions))
			return
		}
		if err := transport.HeaderValueError(source); err != nil {
			c.errs = append(c.errs, fmt.Errorf("%w: WithSource %q: %v", ErrInvalidOptions, source, err))
			return
		}
		c.source = source
	}
}

// WithCodec sets the codec of event data. Default: JSON.
func WithCodec(codec Codec) Option {
	return func(c *config) {
		if codec == nil {
			c.errs = append(c.errs, fmt.Errorf("%w: WithCodec: nil codec", ErrInvalidOptions))
			return
		}
		c.codec = codec
	}
}

// WithMiddleware adds consume-side middleware around every subscription of
// the Bus, the first outermost (as net/http middleware). M is any function
// type of that shape, such as middleware.Middleware, so a slice of them
// can be passed with mw... It wraps the
// dispatcher, so it sees every message of the topic, of known types or not
// (Tracing, Metrics, DeadLetter, Retry belong here). Several WithMiddleware
// options append. Default: none.
func WithMiddleware[M ~func(transport.Handler) transport.Handler](mw ...M) Option {
	return func(c *config) { c.mw = appendMW(c.mw, &c.errs, "WithMiddleware", mw) }
}

// WithHandlerMiddleware adds middleware around every typed handler, the
// first outermost, inside the dispatcher (so it sees only messages that a
// handler of the group knows) and outside each subscription's
// WithGroupMiddleware. Default: none.
func WithHandlerMiddleware[M ~func(transport.Handler) transport.Handler](mw ...M) Option {
	return func(c *config) { c.handlerMW = appendMW(c.handlerMW, &c.errs, "WithHandlerMiddleware", mw) }
}

// WithPublishMiddleware adds publish-side middleware around the
// transport's Publisher, the first outermost. Default: none.
func WithPublishMiddleware[M ~func(transport.Publisher) transport.Publisher](mw ...M) Option {
	return func(c *config) { c.pubMW = appendMW(c.pubMW, &c.errs, "WithPublishMiddleware", mw) }
}

// appendMW appends mw to dst, or, when one of them is nil, none of them and
// an error naming the option to errs.
func appendMW[X any, M ~func(X) X](dst []func(X) X, errs *[]error, option string, mw []M) []func(X) X {
	for i, m := range mw {
		if m == nil {
			*errs = append(*errs, fmt.Errorf("%w: %s: middleware #%d is nil", ErrInvalidOptions, option, i))
			return dst
		}
	}
	for _, m := range mw {
		dst = append(dst, m)
	}
	return dst
}

// WithLogger sets the logger of the Bus. It logs lifecycle events and
// messages of unknown types at Debug level, and a handler's panic, with
// its stack, at Error level (the Bus recovers it, see Subscribe); never an
// error it also returns. Default (or nil): discard.
//
// The transport keeps the logger it was made with, for its own events
// (connections, rebalances, redeliveries): give it one there, usually the
// same. By URL: busway.NewMux(busway.WithLogger(l)).Open(ctx, url); by
// constructor: chanbus.WithLogger, nats.Config.Logger, kafka.Config.Logger
// (for a Mux of your own: the Logger of chanbus.URLOpener, nats.URLOpener,
// kafka.URLOpener).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.log = l }
}

// WithFallback sets the handler of messages whose event type no handler of
// their (topic, group) knows (the message's Group field says which group),
// and of messages without ce_type on a topic with several handlers. Its
// error is the message's result. Default: such messages are acknowledged
// and counted in Stats.Unknown.
func WithFallback(h transport.Handler) Option {
	return func(c *config) { c.fallback = h }
}

// New returns a Bus on t. Shutdown closes t.
//
// New does not fail: an invalid argument (a nil transport, a bad option) is
// returned, wrapping ErrInvalidOptions, by every later call of Register,
// Subscribe, Publish and Start, and by Err.
func New(t transport.Transport, opts ...Option) *Bus {
	c := config{}
	for _, o := range opts {
		if o == nil {
			c.errs = append(c.errs, fmt.Errorf("%w: nil Option", ErrInvalidOptions))
			continue
		}
		o(&c)
	}
	if t == nil {
		c.errs = append([]error{fmt.Errorf("%w: nil transport", ErrInvalidOptions)}, c.errs...)
	}
	if c.source == "" {
		c.source = defaultSource()
	}
	if c.codec == nil {
		c.codec = JSON
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	b := &Bus{
		t:         t,
		source:    c.source,
		codec:     c.codec,
		mw:        c.mw,
		handlerMW: c.handlerMW,
		log:       c.log,
		fallback:  c.fallback,
		settle:    c.settle,
		err:       newErr(c.errs),
		types:     make(map[reflect.Type]*typeInfo),
		routes:    make(map[routeKey]*route),
		shutdown:  make(chan struct{}),
	}
	if t != nil {
		b.system = transport.SystemOf(t)
		var p transport.Publisher = t
		for i := len(c.pubMW) - 1; i >= 0; i-- {
			p = c.pubMW[i](p)
		}
		if len(c.pubMW) > 0 && b.system != "" {
			// The middleware learn the transport's messaging.system from
			// ctx (transport.SystemFromContext).
			inner, sys := p, b.system
			p = publisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
				return inner.Publish(transport.ContextWithSystem(ctx, sys), topic, msgs...)
			})
		}
		b.pub = p
		_, copies := t.(transport.PublishCopier)
		b.recycle = copies && len(c.pubMW) == 0 && b.codec == JSON
	}
	return b
}

// newErr is the error of New's invalid arguments, or nil.
func newErr(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("busway: New: %w", errors.Join(errs...))
}

func defaultSource() string {
	if len(os.Args) > 0 && os.Args[0] != "" {
		if s := filepath.Base(os.Args[0]); s != "." && s != string(filepath.Separator) && transport.HeaderValueError(s) == nil {
			return s
		}
	}
	return "busway"
}

// Err returns the invalid arguments New was given, or nil.
func (b *Bus) Err() error {
	if b == nil {
		return fmt.Errorf("%w: nil *Bus", ErrInvalidOptions)
	}
	return b.err
}

// Codec returns the Bus's codec.
func (b *Bus) Codec() Codec { return b.codec }

// Source returns the CloudEvents source of the events the Bus publishes.
func (b *Bus) Source() string { return b.source }

// Transport returns the transport the Bus was created on.
func (b *Bus) Transport() transport.Transport { return b.t }

// Publisher returns the Publisher that Publish sends through: the
// transport's, wrapped in the WithPublishMiddleware chain. Give it to
// middleware that publishes, such as DeadLetter, so that what it sends is
// traced and counted as the bus's own publishes are.
func (b *Bus) Publisher() transport.Publisher { return b.pub }

// Stats are counters of a Bus since New.
type Stats struct {
	// Published counts events the transport accepted.
	Published uint64
	// Handled counts handler calls that returned nil; Failed those that
	// returned an error, panicked or whose message did not decode. Each
	// delivery attempt counts.
	Handled, Failed uint64
	// Unknown counts messages of an event type no handler of their group
	// knows, acknowledged without a handler (no fallback was set).
	Unknown uint64
	// Fallback counts messages given to the fallback handler.
	Fallback uint64
}

// Stats returns the Bus's counters.
func (b *Bus) Stats() Stats {
	return Stats{
		Published: b.published.Load(),
		Handled:   b.handled.Load(),
		Failed:    b.failed.Load(),
		Unknown:   b.unknown.Load(),
		Fallback:  b.fellBack.Load(),
	}
}

// Register maps the event type T to topic, which must be a valid topic
// name (transport.ValidateTopic). Without Register, T's topic is its event
// type name. Several types may share a topic: their events keep one order
// per key. Registering T again to the same topic does nothing; to another
// topic, or after T was used by Subscribe or Publish under another topic,
// is an error wrapping ErrAlreadyRegistered, as is registering a second Go
// type with the same event type name to the same topic.
func Register[T any](b *Bus, topic string) error {
	if err := b.Err(); err != nil {
		return err
	}
	if err := transport.ValidateTopic(topic); err != nil {
		return fmt.Errorf("busway: Register %v: %w", reflect.TypeFor[T](), err)
	}
	if _, err := b.typeOf(reflect.TypeFor[T](), topic); err != nil {
		return fmt.Errorf("busway: Register %v: %w", reflect.TypeFor[T](), err)
	}
	return nil
}

// typeOf returns the typeInfo of rt, fixing its topic: to topic if given
// (Register), else to the registered one or the event type name.
func (b *Bus) typeOf(rt reflect.Type, topic string) (*typeInfo, error) {
	rt = baseType(rt) // *T publishes and subscribes as T
	if topic == "" {
		if ti := b.lastType.Load(); ti != nil && ti.rt == rt {
			return ti, nil
		}
		b.tmu.RLock()
		ti := b.types[rt]
		b.tmu.RUnlock()
		if ti != nil {
			b.lastType.Store(ti)
			return ti, nil
		}
	}
	name, err := eventTypeName(rt)
	if err != nil {
		return nil, err
	}
	b.tmu.Lock()
	defer b.tmu.Unlock()
	if ti := b.types[rt]; ti != nil {
		if topic != "" && ti.topic != topic {
			return nil, fmt.Errorf("%w: Go type %v is already on topic %q, cannot register it to %q", ErrAlreadyRegistered, rt, ti.topic, topic)
		}
		return ti, nil
	}
	if topic == "" {
		topic = name
		if err := transport.ValidateTopic(topic); err != nil {
			return nil, fmt.Errorf("event type %q of Go type %v is not a valid topic name; Register the type with a topic: %w", name, rt, err)
		}
	}
	for _, o := range b.types {
		if o.name == name && o.topic == topic && o.rt != rt {
			return nil, fmt.Errorf("%w: event type %q on topic %q is already Go type %v, cannot also be %v", ErrAlreadyRegistered, name, topic, o.rt, rt)
		}
	}
	ti := &typeInfo{rt: rt, name: name, topic: topic, flat: planFlatJSON(rt)}
	b.types[rt] = ti
	return ti, nil
}

// baseType lets T and *T share an event type name and a topic.
func baseType(rt reflect.Type) reflect.Type {
	if rt.Kind() == reflect.Pointer {
		return rt.Elem()
	}
	return rt
}

// Start starts a transport subscription for every (topic, group) that has
// handlers. Subscribe after Start starts a new (topic, group) at once.
// Start twice is an error wrapping ErrAlreadyStarted, after Shutdown one
// wrapping ErrClosed. If a subscription fails, Start closes those it
// started and returns the error; the Bus is then still not started.
func (b *Bus) Start(ctx context.Context) error {
	if err := b.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state.Load() {
	case stateStarted:
		return fmt.Errorf("%w: Start called twice", ErrAlreadyStarted)
	case stateDraining, stateClosed:
		return fmt.Errorf("%w: Start after Shutdown", ErrClosed)
	}
	rs := b.sortedRoutes()
	for i, r := range rs {
		if err := r.start(ctx); err != nil {
			var errs []error
			for _, s := range rs[:i] {
				errs = append(errs, s.stop(ctx, s.sub))
				s.sub, s.running = nil, false
			}
			return errors.Join(append([]error{err}, errs...)...)
		}
	}
	b.state.Store(stateStarted)
	b.log.Debug("busway: bus started", "subscriptions", len(rs))
	return nil
}

func (b *Bus) sortedRoutes() []*route {
	rs := make([]*route, 0, len(b.routes))
	for _, r := range b.routes {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(x, y *route) int {
		return cmp.Or(cmp.Compare(x.key.topic, y.key.topic), cmp.Compare(x.key.group, y.key.group))
	})
	return rs
}

// Shutdown stops the Bus in this order: it stops every subscription from
// fetching, lets in-flight handlers finish (they may still publish) until
// ctx ends, acknowledges/commits what finished, and then closes the
// transport. Publish after Shutdown returns an error wrapping ErrClosed.
// Shutdown is idempotent; a second call waits for the first and returns
// its result. Errors of several subscriptions are joined. A handler must
// not call Shutdown: draining would wait for the handler itself.
func (b *Bus) Shutdown(ctx context.Context) error {
	if b == nil {
		return fmt.Errorf("%w: nil *Bus", ErrInvalidOptions)
	}
	b.mu.Lock()
	if s := b.state.Load(); s == stateDraining || s == stateClosed {
		b.mu.Unlock()
		select {
		case <-b.shutdown:
			return b.shutErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	b.state.Store(stateDraining)
	rs := b.sortedRoutes()
	subs := make([]transport.Subscription, len(rs))
	for i, r := range rs {
		subs[i] = r.sub
	}
	b.mu.Unlock()

	// Stop fetching and drain every subscription at once; handlers may
	// still publish meanwhile. Only then close the transport.
	errs := make([]error, len(rs)+1)
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() { errs[i] = r.stop(ctx, subs[i]) })
	}
	wg.Wait()
	b.state.Store(stateClosed)
	if b.t != nil {
		if err := b.t.Close(); err != nil {
			errs[len(rs)] = fmt.Errorf("busway: close transport: %w", err)
		}
	}
	b.shutErr = errors.Join(errs...)
	close(b.shutdown)
	b.log.Debug("busway: bus shut down", "subscriptions", len(rs), "error", b.shutErr)
	return b.shutErr
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*transport.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	return f(ctx, topic, msgs...)
}
