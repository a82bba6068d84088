// Package bustest tests event handlers: a Harness is a started bus.Bus on
// the in-process chanbus transport, shut down by t.Cleanup, that records
// every event published through it and every handler call with its
// outcome, and can wait, without sleeping, until everything published so
// far has been handled.
//
// A handler test is a few lines:
//
//	func TestBilling(t *testing.T) {
//		h := bustest.New(t)
//		bus.Subscribe(h.Bus(), "billing", billing.OnOrderCreated)
//
//		bus.Publish(t.Context(), h.Bus(), OrderCreated{ID: "42", Amount: 1999})
//		h.Wait()
//
//		got := bustest.Published[InvoiceIssued](h) // what the handler published
//		if len(got) != 1 || got[0].Data.Amount != 1999 { t.Errorf("invoices: %+v", got) }
//		for _, c := range bustest.Handled[OrderCreated](h) { // each handler call
//			if c.Err != nil { t.Errorf("%s: %v", c.Group, c.Err) }
//		}
//	}
//
// # Delivery semantics
//
// Those of chanbus, which are those of every busway transport except
// durability: at least once (a handler error means redelivery after a short
// backoff, recorded as another call with a higher Attempt), per-key order,
// every group gets every event. A permanent error (bus.Permanent, a body
// that does not decode) is recorded and the message acknowledged, as the
// DeadLetter middleware of a production chain would: it is not delivered
// again. With WithDeadLetter, the harness's chain has the DeadLetter
// middleware itself, and DeadLetters lists what it dead-lettered.
//
// # Subscribing
//
// A Harness holds any set of handlers that production code subscribes:
// several event types in one (topic, group), subscribed in any order,
// before or between publishes. The bus is started at New; Subscribe on it
// first waits until everything published so far has been handled (as Wait
// does), then adds the handler to its (topic, group), which keeps one
// transport subscription and so the group's per-key order. So the bus's
// rule holds that a consuming (topic, group) never silently skips events,
// and deterministically: every event published before Subscribe was
// delivered without the new handler (counted in Stats.Unknown when no
// handler of the group knew it), every event published after Subscribe
// returned reaches it. A handler must not call Subscribe: it would wait
// for itself until the harness's timeout.
//
// # Errors
//
// Calls return the errors of package bus. Wait fails the test when the bus
// does not settle within its timeout (a handler that keeps failing with a
// transient error is redelivered until then: the failure lists its
// errors); a Shutdown error at cleanup fails the test too.
//
// # Observability
//
// Published, Handled, Failures and DeadLetters return the records; Stats
// the bus's counters (Stats.Unknown: events no handler of a group knew),
// Unrouted the events published to a topic no group subscribes to, which
// chanbus drops.
//
// # Concurrency
//
// A Harness is safe for concurrent use; records are copies, which a test
// may keep.
package bustest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/internal/bushook"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// DefaultTimeout bounds Wait and the Shutdown at cleanup.
const DefaultTimeout = 10 * time.Second

// Harness is a started bus on chanbus with records of what went through
// it. Create it with New.
type Harness struct {
	tb      testing.TB
	ct      *chanbus.Transport
	b       *bus.Bus
	timeout time.Duration

	mu        sync.Mutex
	published []record
	handled   []record
	pubStarts uint64        // Publish calls begun
	inflight  int           // Publish calls not returned
	idle      chan struct{} // closed while inflight == 0
}

// record is one published message or one handler call.
type record struct {
	msg *transport.Message // a copy
	err error
}

// Option configures a Harness. The zero configuration is the default.
type Option func(*config)

type config struct {
	busOpts  []bus.Option
	chanOpts []chanbus.Option
	timeout  time.Duration
	dlq      *middleware.DeadLetterOptions
}

// WithDeadLetter puts the DeadLetter middleware, publishing through the
// harness's bus (Bus.Publisher, so dead letters are recorded), in the
// bus's chain: outside the middleware of WithBusOptions, as a production
// chain has it outside Retry. DeadLetters lists what it dead-lettered; a
// group subscribed to the dead-letter topic receives them. Default: no
// DeadLetter (a permanent failure is recorded and acknowledged; a
// transient one is redelivered).
func WithDeadLetter(opts middleware.DeadLetterOptions) Option {
	return func(c *config) { c.dlq = &opts }
}

// WithBusOptions passes options to bus.New (source, codec, middleware,
// fallback, ...). Default: none.
func WithBusOptions(opts ...bus.Option) Option {
	return func(c *config) { c.busOpts = append(c.busOpts, opts...) }
}

// WithTransportOptions passes options to chanbus.New. Default: a retry
// backoff of 1ms to 50ms, so that tests of failing handlers stay fast.
func WithTransportOptions(opts ...chanbus.Option) Option {
	return func(c *config) { c.chanOpts = append(c.chanOpts, opts...) }
}

// WithTimeout sets how long Wait waits and cleanup waits for Shutdown.
// Default DefaultTimeout (10s).
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// New returns a started Harness. t.Cleanup shuts its bus down (draining
// handlers, then closing chanbus) and fails the test if that fails. An
// invalid option fails the test at once.
func New(tb testing.TB, opts ...Option) *Harness {
	tb.Helper()
	c := config{
		chanOpts: []chanbus.Option{chanbus.WithBackoff(time.Millisecond, 50*time.Millisecond)},
		timeout:  DefaultTimeout,
	}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	h := &Harness{tb: tb, timeout: c.timeout, idle: make(chan struct{})}
	close(h.idle)
	h.ct = chanbus.New(c.chanOpts...)
	// The recorders come first, outermost: they see what the test's code
	// published and what the bus's handlers returned.
	busOpts := []bus.Option{
		bus.WithPublishMiddleware(h.recordPublish),
		bus.WithHandlerMiddleware(h.recordHandle),
		bus.WithMiddleware(ackPermanent),
		bushook.LiveSubscribe(h.settle).(bus.Option),
	}
	if c.dlq != nil {
		opts := *c.dlq
		// Built when a subscription starts, once h.b exists.
		busOpts = append(busOpts, bus.WithMiddleware(func(next transport.Handler) transport.Handler {
			return middleware.DeadLetter(h.b.Publisher(), opts)(next)
		}))
	}
	busOpts = append(busOpts, c.busOpts...)
	h.b = bus.New(h.ct, busOpts...)
	if err := h.b.Start(context.Background()); err != nil {
		_ = h.ct.Close()
		tb.Fatalf("bustest: start bus: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
		defer cancel()
		if err := h.b.Shutdown(ctx); err != nil {
			tb.Errorf("bustest: shut down bus: %v", err)
		}
	})
	return h
}

// Bus returns the harness's bus, started: Subscribe on it adds the
// handler at once (see Subscribing in the package doc).
func (h *Harness) Bus() *bus.Bus { return h.b }

// Publisher returns the publisher of the harness's bus (Bus.Publisher):
// what it publishes is recorded as the bus's publishes are. Give it to
// middleware that publishes, such as a DeadLetter of the test's own.
func (h *Harness) Publisher() transport.Publisher { return h.b.Publisher() }

// Unrouted returns how many events were published to a topic that no
// group subscribes to, which chanbus drops (chanbus.Stats.Unrouted).
func (h *Harness) Unrouted() uint64 { return h.ct.Stats().Unrouted }

// settle is WaitIdle bounded by the harness's timeout, for Subscribe.
func (h *Harness) settle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	return h.WaitIdle(ctx)
}

// Transport returns the chanbus transport under the bus, for publishing
// raw messages (a foreign producer's) with its Publish.
func (h *Harness) Transport() *chanbus.Transport { return h.ct }

// Stats returns the bus's counters.
func (h *Harness) Stats() bus.Stats { return h.b.Stats() }

// WaitIdle returns nil once everything published so far, also by handlers
// while WaitIdle waits, has been handled: a message that failed and waits
// out its redelivery backoff is waited for, until it succeeds, fails
// permanently or is dead-lettered. It returns ctx's error when ctx ends
// first. It does not sleep: it waits for the Publish calls in flight and
// for chanbus's WaitSettled, until no new Publish began meanwhile.
func (h *Harness) WaitIdle(ctx context.Context) error {
	for {
		h.mu.Lock()
		idle := h.idle
		h.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
		h.mu.Lock()
		starts, busy := h.pubStarts, h.inflight > 0
		h.mu.Unlock()
		if busy {
			continue
		}
		if err := h.ct.WaitSettled(ctx); err != nil {
			return err
		}
		h.mu.Lock()
		done := h.pubStarts == starts && h.inflight == 0
		h.mu.Unlock()
		if done {
			return nil
		}
	}
}

// Wait is WaitIdle bounded by the harness's timeout (WithTimeout); it fails
// the test if the bus is not idle by then. Call it from the test's
// goroutine.
func (h *Harness) Wait() {
	h.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	if err := h.WaitIdle(ctx); err != nil {
		f := h.Failures()
		if len(f) > 5 {
			f = f[len(f)-5:]
		}
		h.tb.Fatalf("bustest: bus not settled after %v: %v (stats %+v; last failures: %v)", h.timeout, err, h.b.Stats(), errors.Join(f...))
	}
}

// Handling is one call of a handler: the event it was given (Group and
// Attempt say where and which delivery) and the error it returned, nil for
// success. A body that did not decode gives a Handling with the zero Data
// and a permanent *bus.DecodeError.
type Handling[T any] struct {
	bus.Event[T]
	Err error
}

// Published returns the events of type T published through the bus that
// the transport accepted, in publish order, dead letters excepted (see
// DeadLetters). Topic is set; Group and Attempt are zero.
func Published[T any](h *Harness) []bus.Event[T] {
	h.tb.Helper()
	name, err := bus.EventTypeOf[T]()
	if err != nil {
		h.tb.Fatalf("bustest: Published: %v", err)
	}
	var out []bus.Event[T]
	for _, r := range h.records(&h.published) {
		if r.err != nil || r.msg.Header[transport.HeaderType] != name || isDeadLetter(r.msg) {
			continue
		}
		ev, err := bus.Decode[T](h.b.Codec(), r.msg)
		if err != nil {
			h.tb.Errorf("bustest: Published: %v", err)
			continue
		}
		out = append(out, ev)
	}
	return out
}

// Handled returns the handler calls for events of type T, in the order
// they returned, every attempt included.
func Handled[T any](h *Harness) []Handling[T] {
	h.tb.Helper()
	name, err := bus.EventTypeOf[T]()
	if err != nil {
		h.tb.Fatalf("bustest: Handled: %v", err)
	}
	var out []Handling[T]
	for _, r := range h.records(&h.handled) {
		if r.msg.Header[transport.HeaderType] != name {
			continue
		}
		ev, derr := bus.Decode[T](h.b.Codec(), r.msg)
		if derr != nil && r.err == nil {
			r.err = derr
		}
		out = append(out, Handling[T]{Event: ev, Err: r.err})
	}
	return out
}

// Failures returns the errors of every failed handler call, of any type,
// each naming the topic, group, event type and attempt.
func (h *Harness) Failures() []error {
	var out []error
	for _, r := range h.records(&h.handled) {
		if r.err != nil {
			out = append(out, fmt.Errorf("topic %q group %q event %q (type %q) attempt %d: %w",
				r.msg.Topic, r.msg.Group, r.msg.ID, r.msg.Header[transport.HeaderType], r.msg.Attempt, r.err))
		}
	}
	return out
}

// DeadLetter is a message that the DeadLetter middleware published through
// the harness's bus (WithDeadLetter, or one with the harness's Publisher).
type DeadLetter struct {
	// Topic is the dead-letter topic it was published to.
	Topic string
	// FromTopic and Group say where its handling failed.
	FromTopic, Group string
	// Err is the failure's text, as in middleware.HeaderDLQError.
	Err string
	// Attempts is the handler calls of the delivery that gave up.
	Attempts int
	// Permanent reports whether the failure was marked permanent.
	Permanent bool
	// Message is the message as published, the DLQ headers included.
	Message *transport.Message
}

// DeadLetters returns the dead letters published so far, in publish order.
func (h *Harness) DeadLetters() []DeadLetter {
	var out []DeadLetter
	for _, r := range h.records(&h.published) {
		if !isDeadLetter(r.msg) {
			continue
		}
		hd := r.msg.Header
		n, _ := strconv.Atoi(hd[middleware.HeaderDLQAttempts])
		out = append(out, DeadLetter{Topic: r.msg.Topic, FromTopic: hd[middleware.HeaderDLQTopic], Group: hd[middleware.HeaderDLQGroup],
			Err: hd[middleware.HeaderDLQError], Attempts: n, Permanent: hd[middleware.HeaderDLQPermanent] == "true", Message: r.msg.Clone()})
	}
	return out
}

func isDeadLetter(m *transport.Message) bool {
	_, ok := m.Header[middleware.HeaderDLQTopic]
	return ok
}

// Reset forgets the records so far (not the bus's Stats).
func (h *Harness) Reset() {
	h.mu.Lock()
	h.published, h.handled = nil, nil
	h.mu.Unlock()
}

func (h *Harness) records(rs *[]record) []record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]record(nil), (*rs)...)
}

func (h *Harness) recordPublish(next transport.Publisher) transport.Publisher {
	return publisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
		h.mu.Lock()
		h.pubStarts++
		if h.inflight == 0 {
			h.idle = make(chan struct{})
		}
		h.inflight++
		h.mu.Unlock()

		err := next.Publish(ctx, topic, msgs...)

		// A *transport.PublishError lists the messages that failed; the
		// others were accepted.
		var failed []int
		var pe *transport.PublishError
		if errors.As(err, &pe) {
			for _, f := range pe.Failures {
				failed = append(failed, f.Index)
			}
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if err == nil || pe != nil {
			for i, m := range msgs {
				if slices.Contains(failed, i) {
					continue
				}
				c := m.Clone()
				c.Topic = topic
				h.published = append(h.published, record{msg: c})
			}
		}
		h.inflight--
		if h.inflight == 0 {
			close(h.idle)
		}
		return err
	})
}

func (h *Harness) recordHandle(next transport.Handler) transport.Handler {
	return func(ctx context.Context, m *transport.Message) error {
		err := next(ctx, m)
		c := m.Clone()
		h.mu.Lock()
		h.handled = append(h.handled, record{msg: c, err: err})
		h.mu.Unlock()
		return err
	}
}

// ackPermanent acknowledges a message whose handling failed permanently,
// as the DeadLetter middleware would (without a dead-letter topic), so that
// it is not redelivered for the rest of the test. It is the outermost
// middleware: a DeadLetter of the test's own chain sees the error first.
func ackPermanent(next transport.Handler) transport.Handler {
	return func(ctx context.Context, m *transport.Message) error {
		if err := next(ctx, m); err != nil && !transport.IsPermanent(err) {
			return err
		}
		return nil
	}
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*transport.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	return f(ctx, topic, msgs...)
}
