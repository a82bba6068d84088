package bus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/busway/busway/transport"
)

// SubscribeOption configures a Subscribe call. The zero configuration is
// the default.
//
// Concurrency, StartFrom and transport options belong to the (topic,
// group), which every handler of the group on that topic shares: giving
// two handlers of one (topic, group) different values is an error wrapping
// ErrInvalidOptions.
type SubscribeOption func(*subConfig)

type subConfig struct {
	conc     int
	concSet  bool
	start    transport.StartPosition
	startSet bool
	mw       []func(transport.Handler) transport.Handler
	specific []transport.SpecificOption
	errs     []error
}

// WithConcurrency sets how many handlers of the (topic, group) may run at
// once; messages with the same key still run one at a time, in order.
// Default 1 (0 means the default); negative is an error.
func WithConcurrency(n int) SubscribeOption {
	return func(c *subConfig) {
		if n < 0 {
			c.errs = append(c.errs, fmt.Errorf("%w: WithConcurrency(%d): negative (0 means the default, 1)", ErrInvalidOptions, n))
			return
		}
		if n > transport.MaxConcurrency {
			c.errs = append(c.errs, fmt.Errorf("%w: WithConcurrency(%d): more than transport.MaxConcurrency (%d)", ErrInvalidOptions, n, transport.MaxConcurrency))
			return
		}
		if n > 0 {
			c.conc, c.concSet = n, true
		}
	}
}

// WithStartFrom sets where a group that has no committed position yet
// starts reading. Default transport.StartLatest.
func WithStartFrom(p transport.StartPosition) SubscribeOption {
	return func(c *subConfig) {
		if p != transport.StartLatest && p != transport.StartEarliest {
			c.errs = append(c.errs, fmt.Errorf("%w: WithStartFrom(%v): neither StartLatest nor StartEarliest", ErrInvalidOptions, p))
			return
		}
		c.start, c.startSet = p, true
	}
}

// WithGroupMiddleware adds middleware around this subscription's handler
// only, the first outermost, inside the Bus's WithMiddleware and
// WithHandlerMiddleware. Default: none.
func WithGroupMiddleware[M ~func(transport.Handler) transport.Handler](mw ...M) SubscribeOption {
	return func(c *subConfig) { c.mw = appendMW(c.mw, &c.errs, "WithGroupMiddleware", mw) }
}

// WithTransportOptions passes transport-specific subscribe options (see
// transport.SubscribeOptions.Specific). Default: none.
func WithTransportOptions(opts ...transport.SpecificOption) SubscribeOption {
	return func(c *subConfig) { c.specific = append(c.specific, opts...) }
}

// Subscription is one handler subscribed with Subscribe.
type Subscription struct {
	b      *Bus
	key    routeKey
	typ    string
	closed atomic.Bool
}

// Topic returns the topic of the subscription.
func (s *Subscription) Topic() string { return s.key.topic }

// Group returns the group of the subscription.
func (s *Subscription) Group() string { return s.key.group }

// Type returns the event type name the handler handles.
func (s *Subscription) Type() string { return s.typ }

// Close removes the handler from its (topic, group). Messages of its type
// that the group receives afterwards are unknown to it (see WithFallback).
// When it was the group's last handler on the topic, Close closes the
// transport subscription, draining in-flight handlers until ctx ends.
// Close is idempotent; Shutdown closes every subscription. A handler must
// not call Close of its own subscription: draining would wait for itself.
func (s *Subscription) Close(ctx context.Context) error {
	if s == nil || !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	b := s.b
	b.mu.Lock()
	r := b.routes[s.key]
	if r == nil {
		b.mu.Unlock()
		return nil
	}
	hs := r.handlers.Load()
	byType := maps.Clone(hs.byType)
	delete(byType, s.typ)
	if len(byType) > 0 {
		r.handlers.Store(newHandlerSet(byType))
		b.mu.Unlock()
		return nil
	}
	delete(b.routes, s.key)
	sub := r.sub
	r.sub, r.running = nil, false
	b.mu.Unlock()
	return r.stop(ctx, sub)
}

// Subscribe subscribes fn, in group, to the events of type T (on T's topic,
// see Register). Every group gets every event; within a group each event
// goes to one handler call. fn's error asks for redelivery (see Permanent);
// a body that does not decode into T is a permanent error, not retried.
//
// Subscribe before Start registers the handler; after Start, the handler of
// a new (topic, group) starts consuming at once (Subscribe then blocks
// while the transport subscribes). A handler for a (topic, group) that is
// already consuming is an error wrapping ErrAlreadyStarted; a second
// handler of T in one group one wrapping ErrAlreadyRegistered. An empty or
// invalid group, a nil fn or a bad option wraps ErrInvalidOptions; after
// Shutdown, ErrClosed.
func Subscribe[T any](b *Bus, group string, fn func(ctx context.Context, e Event[T]) error, opts ...SubscribeOption) (*Subscription, error) {
	rt := reflect.TypeFor[T]()
	if err := b.Err(); err != nil {
		return nil, err
	}
	if fn == nil {
		return nil, fmt.Errorf("busway: Subscribe %v: %w: nil handler func", rt, ErrInvalidOptions)
	}
	var c subConfig
	for _, o := range opts {
		if o == nil {
			c.errs = append(c.errs, fmt.Errorf("%w: nil SubscribeOption", ErrInvalidOptions))
			continue
		}
		o(&c)
	}
	if err := errors.Join(c.errs...); err != nil {
		return nil, fmt.Errorf("busway: Subscribe %v in group %q: %w", rt, group, err)
	}
	so := transport.SubscribeOptions{Group: group, Concurrency: c.conc, StartFrom: c.start, Specific: c.specific}
	if err := so.Validate(); err != nil {
		return nil, fmt.Errorf("busway: Subscribe %v: %w", rt, err)
	}
	ti, err := b.typeOf(rt, "")
	if err != nil {
		return nil, fmt.Errorf("busway: Subscribe %v: %w", rt, err)
	}

	codec := b.codec
	var h transport.Handler = func(ctx context.Context, m *transport.Message) error {
		ev, err := Decode[T](codec, m)
		if err != nil {
			return err
		}
		return fn(ctx, ev)
	}
	if codec == JSON {
		// The JSON codec keeps nothing of the value it decodes into, so
		// the handler decodes into recycled targets (a user's codec might
		// keep the pointer it was given: it gets a new T each time).
		// A flat struct is decoded by flatJSON first (see there).
		targets := sync.Pool{New: func() any { return new(T) }}
		flat := planFlatJSON(rt)
		h = func(ctx context.Context, m *transport.Message) error {
			ev, err := decode[T](codec, m, &targets, flat)
			if err != nil {
				return err
			}
			return fn(ctx, ev)
		}
	}
	h = chain(h, c.mw)
	h = chain(h, b.handlerMW)
	e := &entry{typ: ti.name, goType: rt, h: h}

	key := routeKey{topic: ti.topic, group: group}
	if b.settle != nil && b.state.Load() == stateStarted {
		// A test harness's bus (bushook.LiveSubscribe): let everything
		// published so far be delivered first, so that the new handler
		// deterministically gets exactly the events published after this.
		if err := b.settle(context.Background()); err != nil {
			return nil, fmt.Errorf("busway: Subscribe %v in group %q: waiting for the bus to settle: %w", rt, group, err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.state.Load(); s == stateDraining || s == stateClosed {
		return nil, fmt.Errorf("busway: Subscribe %v in group %q: %w: the bus is shut down", rt, group, ErrClosed)
	}
	sub := &Subscription{b: b, key: key, typ: ti.name}
	if r := b.routes[key]; r != nil {
		if r.running && b.settle != nil {
			return sub, r.addLive(&c, e, rt)
		}
		if r.running {
			return nil, fmt.Errorf("busway: Subscribe %v: %w: group %q is already consuming topic %q; subscribe every handler of a (topic, group) before Start",
				rt, ErrAlreadyStarted, group, ti.topic)
		}
		hs := r.handlers.Load()
		if o := hs.byType[ti.name]; o != nil {
			return nil, fmt.Errorf("busway: Subscribe %v: %w: group %q already has a handler for event type %q on topic %q (Go type %v)",
				rt, ErrAlreadyRegistered, group, ti.name, ti.topic, o.goType)
		}
		if err := r.merge(&c); err != nil {
			return nil, fmt.Errorf("busway: Subscribe %v in group %q on topic %q: %w", rt, group, ti.topic, err)
		}
		byType := maps.Clone(hs.byType)
		byType[ti.name] = e
		r.handlers.Store(newHandlerSet(byType))
		return sub, nil
	}
	r := &route{b: b, key: key, opts: so, concSet: c.concSet, startSet: c.startSet, groupMW: len(c.mw) > 0}
	r.handlers.Store(newHandlerSet(map[string]*entry{ti.name: e}))
	if b.state.Load() == stateStarted {
		// ctx: Subscribe has none (the API's shape); the transport bounds
		// its own connection attempts.
		if err := r.start(context.Background()); err != nil {
			return nil, err
		}
	}
	b.routes[key] = r
	return sub, nil
}

func chain(h transport.Handler, mw []func(transport.Handler) transport.Handler) transport.Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

type routeKey struct{ topic, group string }

// route is one (topic, group): one transport subscription whose handler
// dispatches by event type.
type route struct {
	b        *Bus
	key      routeKey
	opts     transport.SubscribeOptions
	concSet  bool
	startSet bool
	groupMW  bool                       // a handler has WithGroupMiddleware
	handlers atomic.Pointer[handlerSet] // replaced, never changed

	// guarded by b.mu
	running bool
	sub     transport.Subscription
}

// entry is one typed handler of a route.
type entry struct {
	typ    string
	goType reflect.Type
	h      transport.Handler
}

// handlerSet is an immutable snapshot of a route's handlers.
type handlerSet struct {
	byType map[string]*entry
	only   *entry // the one handler, when there is exactly one
	names  string // the event types, sorted, for errors
}

func newHandlerSet(byType map[string]*entry) *handlerSet {
	hs := &handlerSet{byType: byType}
	if len(byType) == 1 {
		for _, e := range byType {
			hs.only = e
		}
	}
	hs.names = strings.Join(slices.Sorted(maps.Keys(byType)), ", ")
	return hs
}

// merge takes a further handler's options into the route's.
func (r *route) merge(c *subConfig) error {
	if c.concSet {
		if r.concSet && r.opts.Concurrency != c.conc {
			return fmt.Errorf("%w: WithConcurrency(%d) conflicts with WithConcurrency(%d) of another handler of the group", ErrInvalidOptions, c.conc, r.opts.Concurrency)
		}
		r.opts.Concurrency, r.concSet = c.conc, true
	}
	if c.startSet {
		if r.startSet && r.opts.StartFrom != c.start {
			return fmt.Errorf("%w: WithStartFrom(%v) conflicts with WithStartFrom(%v) of another handler of the group", ErrInvalidOptions, c.start, r.opts.StartFrom)
		}
		r.opts.StartFrom, r.startSet = c.start, true
	}
	r.opts.Specific = append(r.opts.Specific, c.specific...)
	r.groupMW = r.groupMW || len(c.mw) > 0
	return nil
}

// addLive adds e to the running route r of a harness's bus (see
// bushook.LiveSubscribe): it swaps the handler set, which dispatch reads
// per message, so no event published after this is delivered without e.
// When e's options change the route's (Concurrency, transport options), it
// first subscribes a second member of the group with the new options and
// then closes the first: the group never has no member, so a transport
// such as chanbus, which drops a group's queue with its last member, loses
// nothing. Called with b.mu held.
func (r *route) addLive(c *subConfig, e *entry, rt reflect.Type) error {
	hs := r.handlers.Load()
	if o := hs.byType[e.typ]; o != nil {
		return fmt.Errorf("busway: Subscribe %v: %w: group %q already has a handler for event type %q on topic %q (Go type %v)",
			rt, ErrAlreadyRegistered, r.key.group, e.typ, r.key.topic, o.goType)
	}
	old := r.opts
	if err := r.merge(c); err != nil {
		return fmt.Errorf("busway: Subscribe %v in group %q on topic %q: %w", rt, r.key.group, r.key.topic, err)
	}
	byType := maps.Clone(hs.byType)
	byType[e.typ] = e
	r.handlers.Store(newHandlerSet(byType))
	if r.opts.Concurrency == old.Concurrency && len(r.opts.Specific) == len(old.Specific) {
		return nil
	}
	prev := r.sub
	if err := r.start(context.Background()); err != nil {
		r.sub, r.running = prev, true
		return err
	}
	return r.stop(context.Background(), prev)
}

// start subscribes the route on the transport. Called with b.mu held.
func (r *route) start(ctx context.Context) error {
	h := chain(r.dispatch, r.b.mw)
	if sys := r.b.system; sys != "" && (len(r.b.mw) > 0 || len(r.b.handlerMW) > 0 || r.groupMW) {
		// The middleware learn the transport's messaging.system from ctx
		// (transport.SystemFromContext).
		inner, sc := h, newSysContexts(sys)
		h = func(ctx context.Context, m *transport.Message) error {
			return inner(sc.get(ctx), m)
		}
	}
	sub, err := r.b.t.Subscribe(ctx, r.key.topic, h, r.opts)
	if err != nil {
		return fmt.Errorf("busway: subscribe group %q to topic %q (event types %s): %w", r.key.group, r.key.topic, r.handlers.Load().names, err)
	}
	r.sub, r.running = sub, true
	r.b.log.Debug("busway: subscribed", "topic", r.key.topic, "group", r.key.group, "types", r.handlers.Load().names)
	return nil
}

// stop closes the route's transport subscription sub, draining it.
func (r *route) stop(ctx context.Context, sub transport.Subscription) error {
	if sub == nil {
		return nil
	}
	if err := sub.Close(ctx); err != nil {
		return fmt.Errorf("busway: close subscription of group %q to topic %q: %w", r.key.group, r.key.topic, err)
	}
	return nil
}

// dispatch routes a message to the handler of its event type.
func (r *route) dispatch(ctx context.Context, m *transport.Message) error {
	b := r.b
	hs := r.handlers.Load()
	typ := m.Header[transport.HeaderType]
	e := hs.only
	if e == nil || e.typ != typ {
		e = hs.byType[typ] // (with one handler: a look-up only for another type)
	}
	if e == nil && typ == "" {
		e = hs.only // a message without type on a topic of one type: decode what is there
	}
	if e == nil {
		if b.fallback != nil {
			b.fellBack.Add(1)
			return transport.CallHandler(ctx, b.log, b.fallback, m)
		}
		if typ == "" {
			b.failed.Add(1)
			return transport.Permanent(&EnvelopeError{Topic: m.Topic, ID: m.ID, Attribute: transport.HeaderType,
				Reason: fmt.Sprintf("missing: cannot route among the event types of group %q (%s); set WithFallback to handle such messages", r.key.group, hs.names)})
		}
		b.unknown.Add(1)
		transport.ReportOutcome(ctx, transport.OutcomeUnknownType)
		b.log.Debug("busway: no handler for event type; acknowledged", "topic", m.Topic, "group", r.key.group, "type", typ, "id", m.ID)
		return nil
	}
	// CallHandler: a panicking handler counts as failed (Stats, and the
	// Metrics and Tracing middleware outside see a *transport.PanicError),
	// and the panic with its stack goes to the bus's logger.
	if err := transport.CallHandler(ctx, b.log, e.h, m); err != nil {
		b.failed.Add(1)
		return err
	}
	b.handled.Add(1)
	return nil
}
