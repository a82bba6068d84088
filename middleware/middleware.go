package middleware

import (
	"context"

	"github.com/busway/busway/transport"
)

// Middleware wraps a consume-side handler. It is a plain function value, so
// package bus and every transport accept it without importing this package.
type Middleware func(transport.Handler) transport.Handler

// Chain composes middleware into one, the first outermost, as with
// net/http middleware: Chain(a, b, c)(h) is a(b(c(h))). Nil entries are
// skipped. The recommended order is in the package documentation.
func Chain(mws ...Middleware) Middleware {
	mws = compact(mws)
	return func(h transport.Handler) transport.Handler {
		for i := len(mws) - 1; i >= 0; i-- {
			h = mws[i](h)
		}
		return h
	}
}

// PublisherMiddleware wraps a Publisher (publish-side tracing and metrics).
type PublisherMiddleware func(transport.Publisher) transport.Publisher

// ChainPublisher composes publisher middleware, the first outermost. Nil
// entries are skipped.
func ChainPublisher(mws ...PublisherMiddleware) PublisherMiddleware {
	mws = compact(mws)
	return func(p transport.Publisher) transport.Publisher {
		for i := len(mws) - 1; i >= 0; i-- {
			p = mws[i](p)
		}
		return p
	}
}

// PublisherFunc adapts a function to transport.Publisher.
type PublisherFunc func(ctx context.Context, topic string, msgs ...*transport.Message) error

// Publish calls f.
func (f PublisherFunc) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	return f(ctx, topic, msgs...)
}

var _ transport.Publisher = PublisherFunc(nil)

func compact[T ~func(transport.Handler) transport.Handler | ~func(transport.Publisher) transport.Publisher](fs []T) []T {
	out := make([]T, 0, len(fs))
	for _, f := range fs {
		if f != nil {
			out = append(out, f)
		}
	}
	return out
}

// Outcome says how the chain finished with a message, for Metrics, Tracing
// and Logging, which sit outside the middleware that decide it.
type Outcome string

const (
	// OutcomeSuccess: the handler returned nil.
	OutcomeSuccess Outcome = "success"
	// OutcomeError: the chain returned an error; the message is redelivered.
	OutcomeError Outcome = "error"
	// OutcomeDeadLettered: the handler failed and DeadLetter published the
	// message to the dead-letter topic, then acknowledged it.
	OutcomeDeadLettered Outcome = "dead_lettered"
	// OutcomeDuplicate: Idempotent skipped a message already handled.
	OutcomeDuplicate Outcome = "duplicate"
	// OutcomeUnknownType: no handler of the group knows the message's
	// event type; the bus acknowledged it unhandled (bus.Stats.Unknown).
	OutcomeUnknownType Outcome = transport.OutcomeUnknownType
	// OutcomeDropped: the handler failed and DeadLetter could not publish
	// the dead letter for good, so the message was acknowledged without
	// being handled (see DeadLetterOptions.OnUnpublishable).
	OutcomeDropped Outcome = "dropped"
)

// report carries what inner middleware decided back to outer observers
// (Metrics, Tracing, Logging) without changing the Handler signature. One
// is created per delivery by the outermost observer; the chain runs one
// attempt at a time, so no lock is needed. It is itself the context that
// carries it (one allocation instead of two): Value answers reportKey and
// defers everything else, Done and Deadline included, to the parent.
type report struct {
	context.Context
	deadLettered bool
	dropped      bool // acknowledged unhandled: the dead letter was unpublishable
	duplicate    bool
	dlqTopic     string
	err          error   // the handler error that led to dead-lettering
	attempts     int     // handler calls, when known
	other        Outcome // reported with transport.ReportOutcome
}

// ReportOutcome records an outcome reported by inner code
// (transport.ReportOutcome), such as the bus's OutcomeUnknownType.
func (r *report) ReportOutcome(outcome string) { r.other = Outcome(outcome) }

type reportKey struct{}

// Value returns r for reportKey and the parent's value otherwise.
func (r *report) Value(key any) any {
	switch key.(type) {
	case reportKey, transport.OutcomeReporterKey:
		return r
	}
	return r.Context.Value(key)
}

// withReport returns ctx carrying a report, reusing one an outer observer
// installed.
func withReport(ctx context.Context) (context.Context, *report) {
	if r := reportFrom(ctx); r != nil {
		return ctx, r
	}
	r := &report{Context: ctx}
	return r, r
}

func reportFrom(ctx context.Context) *report {
	r, _ := ctx.Value(reportKey{}).(*report)
	return r
}

// outcome classifies a finished delivery.
func (r *report) outcome(err error) Outcome {
	switch {
	case err != nil:
		return OutcomeError
	case r != nil && r.deadLettered:
		return OutcomeDeadLettered
	case r != nil && r.dropped:
		return OutcomeDropped
	case r != nil && r.duplicate:
		return OutcomeDuplicate
	case r != nil && r.other != "":
		return r.other
	}
	return OutcomeSuccess
}
