package bus

import (
	"errors"
	"fmt"

	"github.com/busway/busway/transport"
)

// Sentinel errors of package bus. Errors returned by this package wrap them
// (or the sentinels of package transport) with detail; test with errors.Is.
var (
	// ErrClosed is transport.ErrClosed: Publish after Shutdown finished,
	// Subscribe or Start after Shutdown began.
	ErrClosed = transport.ErrClosed
	// ErrInvalidOptions is transport.ErrInvalidOptions: a nil transport, a
	// bad option of New, Subscribe or Publish.
	ErrInvalidOptions = transport.ErrInvalidOptions
	// ErrAlreadyStarted: Start called twice, or a handler subscribed for a
	// (topic, group) that is already consuming. Adding a handler to a
	// running subscription would open a window in which its events were
	// acknowledged unhandled; busway refuses instead.
	ErrAlreadyStarted = errors.New("already started")
	// ErrAlreadyRegistered: a Go type registered to a second topic, two Go
	// types with one event type name on one topic, or a second handler for
	// one event type in one (topic, group).
	ErrAlreadyRegistered = errors.New("already registered")
	// ErrInvalidEventType: a Go type whose event type name is empty or not
	// usable (an unnamed type without an EventType method, a name with
	// control characters).
	ErrInvalidEventType = errors.New("invalid event type")
	// ErrInvalidEnvelope: a message whose CloudEvents attributes are
	// malformed (bad ce_time, unsupported ce_specversion), or one without
	// ce_type where routing by type is needed.
	ErrInvalidEnvelope = errors.New("invalid event envelope")
)

// Permanent marks err as an error that retrying cannot fix: Retry
// middleware does not retry it and DeadLetter middleware dead-letters it at
// once. It is transport.Permanent; Permanent(nil) is nil.
func Permanent(err error) error { return transport.Permanent(err) }

// IsPermanent reports whether err or an error it wraps was marked
// Permanent. It is transport.IsPermanent.
func IsPermanent(err error) bool { return transport.IsPermanent(err) }

// EnvelopeError reports a malformed CloudEvents attribute of a delivered
// message. It unwraps to ErrInvalidEnvelope.
type EnvelopeError struct {
	Topic     string // the message's topic, if known
	ID        string // the message's ID, if known
	Attribute string // the header, e.g. "ce_time"
	Value     string // its value, shortened
	Reason    string
}

func (e *EnvelopeError) Error() string {
	return fmt.Sprintf("message %s: header %s %q: %s", where(e.ID, e.Topic), e.Attribute, e.Value, e.Reason)
}

// Unwrap returns ErrInvalidEnvelope.
func (e *EnvelopeError) Unwrap() error { return ErrInvalidEnvelope }

// DecodeError reports a message body that the codec could not decode into
// the handler's Go type. Handlers receive it wrapped in Permanent.
type DecodeError struct {
	Topic  string // the message's topic
	ID     string // the event ID
	Type   string // the event type (ce_type), if the message had one
	GoType string // the Go type decoded into
	Err    error  // the codec's error
}

func (e *DecodeError) Error() string {
	typ := e.Type
	if typ == "" {
		typ = "(no ce_type)"
	}
	return fmt.Sprintf("decode event %s of type %q into %s: %v", where(e.ID, e.Topic), typ, e.GoType, e.Err)
}

// Unwrap returns the codec's error.
func (e *DecodeError) Unwrap() error { return e.Err }

func where(id, topic string) string {
	s := fmt.Sprintf("%q", shorten(id))
	if topic != "" {
		s += fmt.Sprintf(" on topic %q", topic)
	}
	return s
}

// shorten keeps error messages readable when a header value is huge.
func shorten(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
