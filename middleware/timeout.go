package middleware

import (
	"context"
	"time"

	"github.com/busway/busway/transport"
)

// Timeout gives each handler call a deadline d from when it starts. A
// handler must watch ctx for the deadline to have an effect; it then
// returns context.DeadlineExceeded (or an error wrapping it), which Retry
// retries like any other failure. d <= 0 means no deadline: the middleware
// passes calls through unchanged.
//
// Place it inside Retry, so that each attempt gets its own deadline rather
// than all attempts sharing one, and outside Limit, so that waiting for a
// slot counts against the deadline.
func Timeout(d time.Duration) Middleware {
	return func(next transport.Handler) transport.Handler {
		if d <= 0 {
			return next
		}
		return func(ctx context.Context, m *transport.Message) error {
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			return next(ctx, m)
		}
	}
}
