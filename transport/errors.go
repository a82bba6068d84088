package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
)

// Sentinel errors. Transports wrap them with detail; test with errors.Is.
var (
	// ErrClosed: the transport or subscription was closed.
	ErrClosed = errors.New("transport closed")
	// ErrInvalidTopic: a topic name is empty or has characters that not
	// every broker accepts.
	ErrInvalidTopic = errors.New("invalid topic")
	// ErrInvalidMessage: a nil message, or one the transport cannot send.
	ErrInvalidMessage = errors.New("invalid message")
	// ErrMessageTooLarge: the message exceeds the broker's size limit.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrInvalidOptions: a subscribe option or a transport config value is
	// invalid.
	ErrInvalidOptions = errors.New("invalid options")
	// ErrInvalidURL: a transport URL could not be parsed or has a bad part.
	ErrInvalidURL = errors.New("invalid transport URL")
	// ErrUnknownScheme: no opener is registered for a URL's scheme.
	ErrUnknownScheme = errors.New("unknown transport scheme")
	// ErrTopicNotFound: the topic (Kafka topic, NATS stream) does not exist
	// and the transport may not create it.
	ErrTopicNotFound = errors.New("topic not found")
	// ErrUnavailable: the broker could not be reached.
	ErrUnavailable = errors.New("broker unavailable")
	// ErrAuthentication: the broker rejected the credentials.
	ErrAuthentication = errors.New("authentication failed")
)

// PermanentError marks an error that retrying cannot fix (a body that does
// not decode, a validation failure). Retry middleware does not retry it;
// DeadLetter middleware dead-letters it at once.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string {
	if e.Err == nil {
		return "permanent error"
	}
	return e.Err.Error()
}
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as permanent. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err or any error it wraps was marked Permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// MessageError is the failure of one message of a Publish call.
type MessageError struct {
	Index int    // position in the Publish call
	ID    string // the message's ID
	Err   error
}

func (e MessageError) Error() string {
	return fmt.Sprintf("message #%d (id %q): %v", e.Index, e.ID, e.Err)
}

// PublishError reports the messages of one Publish call that the broker did
// not accept. The others were accepted. It unwraps to each message's error.
type PublishError struct {
	Topic    string
	Total    int // messages in the call
	Failures []MessageError
}

func (e *PublishError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "publish to %q: %d of %d messages failed", e.Topic, len(e.Failures), e.Total)
	for i, f := range e.Failures {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Failures)-i)
			break
		}
		b.WriteString("; ")
		b.WriteString(f.Error())
	}
	return b.String()
}

// Unwrap returns each failed message's error, for errors.Is and errors.As.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, len(e.Failures))
	for i, f := range e.Failures {
		errs[i] = f.Err
	}
	return errs
}

// PanicError is a handler panic turned into an error. Transports call
// handlers through CallHandler, so a panicking handler never crashes the
// process: its message counts as failed and is delivered again. Test for it
// with errors.As.
type PanicError struct {
	// Value is what the handler passed to panic.
	Value any
	// Stack is the goroutine's stack at the panic (runtime/debug.Stack).
	Stack []byte
}

// Error describes the panic value; the stack is in the Stack field, not in
// the text, so that headers and log lines stay one line.
func (e *PanicError) Error() string {
	return fmt.Sprintf("handler panic: %v", e.Value)
}

// Unwrap returns the panic value when it is an error (panic(err)), so
// errors.Is finds it.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// ErrHandlerGoexit is the failure of a handler that ended its goroutine
// with runtime.Goexit, as t.FailNow, t.Fatal and t.SkipNow do when a test
// calls them from a handler. Its message counts as failed and is delivered
// again. Test for it with errors.Is.
var ErrHandlerGoexit = errors.New("handler called runtime.Goexit (t.FailNow, t.Fatal or t.SkipNow in a handler?); the message counts as failed")

// CallHandler calls h and turns a panic into a *PanicError carrying the
// panic value and stack, which it also logs at level Error to log (nil
// discards): nobody else sees the stack of a panic a transport recovered.
// A panic with a nil value (panic(nil)) is reported with a
// *runtime.PanicNilError value, as Go 1.21+ does.
//
// A handler that calls runtime.Goexit ends the calling goroutine, and Go
// offers no way to stop that: CallHandler does not return then. It logs the
// exit at level Error (with ErrHandlerGoexit and the stack), and the calling
// transport must see it in its own deferred call (a delivery still marked as
// running when the goroutine unwinds), count the message as failed with
// ErrHandlerGoexit and start a goroutine in place of the one that ended.
// chanbus, nats and kafka do; the conformance check HandlerGoexit proves it.
func CallHandler(ctx context.Context, log *slog.Logger, h Handler, m *Message) (err error) {
	returned := false
	defer func() {
		if returned {
			return
		}
		if v := recover(); v != nil {
			pe := &PanicError{Value: v, Stack: debug.Stack()}
			if log != nil {
				log.LogAttrs(ctx, slog.LevelError, "busway: handler panicked; the message counts as failed",
					slog.String("topic", m.Topic), slog.String("group", m.Group), slog.String("id", m.ID),
					slog.Int("attempt", m.Attempt), slog.Any("panic", v), slog.String("stack", string(pe.Stack)))
			}
			err = pe
			return
		}
		// Neither returned nor panicked: runtime.Goexit.
		if log != nil {
			log.LogAttrs(ctx, slog.LevelError, ErrHandlerGoexit.Error(),
				slog.String("topic", m.Topic), slog.String("group", m.Group), slog.String("id", m.ID),
				slog.Int("attempt", m.Attempt), slog.String("stack", string(debug.Stack())))
		}
	}()
	err = h(ctx, m)
	returned = true
	return err
}
