package middleware

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/busway/busway/transport"
)

// PanicError is a handler panic turned into an error by Recover. Test for it
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
	return fmt.Sprintf("busway: handler panic: %v", e.Value)
}

// Unwrap returns the panic value when it is an error (panic(err)), so
// errors.Is finds it.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// Recover turns a handler panic into a *PanicError carrying the panic value
// and stack, so the process survives and the message is treated as failed:
// Retry retries it, DeadLetter records it with the panic reason.
//
// Place it innermost, next to the handler, so that every other middleware
// sees the panic as an ordinary error. A panic with a nil value
// (panic(nil)) is reported as a *runtime.PanicNilError, as Go 1.21+ does.
func Recover() Middleware {
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) (err error) {
			defer func() {
				if v := recover(); v != nil {
					err = &PanicError{Value: v, Stack: debug.Stack()}
				}
			}()
			return next(ctx, m)
		}
	}
}
