package transport

import (
	"context"
	"errors"
	"fmt"
	"reflect"
)

// Systemer is implemented by transports that name their messaging system,
// the OpenTelemetry messaging.system attribute: "nats", "kafka", "chanbus".
// Tracing and metrics middleware default to it (see ContextWithSystem).
type Systemer interface {
	System() string
}

// SystemOf returns t's System(), or "" when t does not implement Systemer.
func SystemOf(t any) string {
	if s, ok := t.(Systemer); ok {
		return s.System()
	}
	return ""
}

type systemKey struct{}

// ContextWithSystem returns ctx carrying the messaging system of the
// transport that a message is published to or was delivered by, for
// middleware that report it (messaging.system). Package bus puts its
// transport's SystemOf into the context of its middleware chains.
func ContextWithSystem(ctx context.Context, system string) context.Context {
	return context.WithValue(ctx, systemKey{}, system)
}

// SystemFromContext returns the messaging system ContextWithSystem put in
// ctx, or "".
func SystemFromContext(ctx context.Context) string {
	s, _ := ctx.Value(systemKey{}).(string)
	return s
}

// Blocker is implemented by the handlers' context of a transport whose
// Publish, called from a handler, may wait for that transport's own
// workers to make room (chanbus's backpressure). Block tells it that the
// handler is about to wait for something other than the transport, such
// as a semaphore that other handlers hold (middleware.Limit), and returns
// the func to call when that wait is over. Meanwhile a handler's Publish
// does not count on this worker to make room: a handler that holds the
// semaphore and publishes cannot wait for one that waits for it.
type Blocker interface {
	Block() (unblock func())
}

// BlockerKey is the context key under which a handler's context carries
// its transport's Blocker.
type BlockerKey struct{}

// Block tells the transport that delivered the message of ctx, a handler's
// context, that the handler is about to wait for something other than the
// transport (see Blocker), and returns the func to call when the wait is
// over. Outside a handler, or on a transport without backpressure between
// handlers, it does nothing.
func Block(ctx context.Context) (unblock func()) {
	if b, ok := ctx.Value(BlockerKey{}).(Blocker); ok {
		return b.Block()
	}
	return func() {}
}

// Outcomes a handler reports with ReportOutcome for a message it
// acknowledged (returned nil for) without handling it.
const (
	// OutcomeUnknownType: no handler of the group knows the message's
	// event type; it was acknowledged unhandled.
	OutcomeUnknownType = "unknown_type"
)

// OutcomeReporter receives the outcome of a message whose handler returned
// nil without handling it (OutcomeUnknownType), from ReportOutcome.
// Observing middleware (Metrics, Tracing) put one in the handler's
// context, under the key OutcomeReporterKey{}.
type OutcomeReporter interface {
	ReportOutcome(outcome string)
}

// OutcomeReporterKey is the context key of the OutcomeReporter; it is
// exported so that a context type that is itself the reporter can answer
// Value(OutcomeReporterKey{}) without a second allocation.
type OutcomeReporterKey struct{}

// ReportOutcome tells the OutcomeReporter in ctx, if any, how the message
// being handled finished.
func ReportOutcome(ctx context.Context, outcome string) {
	if r, ok := ctx.Value(OutcomeReporterKey{}).(OutcomeReporter); ok {
		r.ReportOutcome(outcome)
	}
}

// ErrorTypeOther is ErrorType's answer for an error that has no class of
// its own (a plain errors.New), as the OpenTelemetry semantic conventions
// name it.
const ErrorTypeOther = "_OTHER"

// ErrorType returns the class of err for the OpenTelemetry error.type
// attribute: low in cardinality, and the underlying cause rather than a
// wrapper. It looks through fmt.Errorf wrapping, errors.Join (its first
// error) and *PermanentError, and returns the first of: an ErrorType()
// string method's answer; "context.Canceled" or
// "context.DeadlineExceeded"; the name of a sentinel of this package
// ("transport.ErrUnavailable"); the Go type of the error
// ("*bus.DecodeError", "*transport.PanicError"); ErrorTypeOther for an
// unclassed error (errors.New) and "" for nil.
func ErrorType(err error) string {
	for err != nil {
		if et, ok := err.(interface{ ErrorType() string }); ok {
			if s := et.ErrorType(); s != "" {
				return s
			}
		}
		switch err {
		case context.Canceled:
			return "context.Canceled"
		case context.DeadlineExceeded:
			return "context.DeadlineExceeded"
		}
		for _, s := range sentinels {
			if err == s.err {
				return s.name
			}
		}
		var next error
		switch x := err.(type) {
		case *PermanentError:
			next = x.Err
		case interface{ Unwrap() []error }:
			if es := x.Unwrap(); len(es) > 0 && reflect.TypeOf(err) != reflect.TypeOf(&PublishError{}) {
				next = es[0]
			}
		default:
			if t := reflect.TypeOf(err); t == fmtWrapError {
				next = errors.Unwrap(err)
			}
		}
		if next == nil {
			t := reflect.TypeOf(err)
			if t == plainError || t == fmtWrapError || t == fmtWrapErrors || t == joinError {
				return ErrorTypeOther
			}
			return t.String()
		}
		err = next
	}
	return ""
}

var (
	plainError    = reflect.TypeOf(errors.New(""))
	fmtWrapError  = reflect.TypeOf(fmt.Errorf("%w", errors.New("")))
	fmtWrapErrors = reflect.TypeOf(fmt.Errorf("%w %w", errors.New(""), errors.New("")))
	joinError     = reflect.TypeOf(errors.Join(errors.New("")))
	// A slice, not a map: an error of an uncomparable type must not panic.
	sentinels = []struct {
		err  error
		name string
	}{
		{ErrClosed, "transport.ErrClosed"},
		{ErrInvalidTopic, "transport.ErrInvalidTopic"},
		{ErrInvalidMessage, "transport.ErrInvalidMessage"},
		{ErrMessageTooLarge, "transport.ErrMessageTooLarge"},
		{ErrInvalidOptions, "transport.ErrInvalidOptions"},
		{ErrInvalidURL, "transport.ErrInvalidURL"},
		{ErrUnknownScheme, "transport.ErrUnknownScheme"},
		{ErrTopicNotFound, "transport.ErrTopicNotFound"},
		{ErrUnavailable, "transport.ErrUnavailable"},
		{ErrAuthentication, "transport.ErrAuthentication"},
	}
)
