package middleware

import (
	"context"

	"github.com/busway/busway/transport"
)

// PanicError is a handler panic turned into an error by Recover (the same
// type transports use when they recover a panic themselves). Test for it
// with errors.As.
type PanicError = transport.PanicError

// Recover turns a handler panic into a *PanicError carrying the panic value
// and stack, so the process survives and the message is treated as failed:
// Retry retries it, DeadLetter records it with the panic reason.
//
// Place it innermost, next to the handler, so that every other middleware
// sees the panic as an ordinary error. A panic with a nil value
// (panic(nil)) is reported as a *runtime.PanicNilError, as Go 1.21+ does.
func Recover() Middleware {
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			return transport.CallHandler(ctx, nil, next, m)
		}
	}
}
