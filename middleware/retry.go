package middleware

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// RetryOptions configure Retry. The zero value means the documented
// defaults; a negative value is treated as zero. The fields are those of
// backoff.Policy, the one retry policy of busway's transports and
// middleware, with Retry's own defaults (jitter on, 5 attempts).
type RetryOptions struct {
	// MaxAttempts is the number of handler calls per delivery, the first
	// included. Default 5; 1 disables retrying.
	MaxAttempts int
	// InitialInterval is the backoff before the second attempt. Default
	// 100ms.
	InitialInterval time.Duration
	// MaxInterval caps one backoff. Default 10s.
	MaxInterval time.Duration
	// Multiplier grows the backoff after each attempt. Default 2; values
	// below 1 mean the default.
	Multiplier float64
	// Jitter randomizes each backoff b into [b*(1-Jitter), b*(1+Jitter)],
	// so that many consumers failing together do not retry in lockstep.
	// Default 0.2; values above 1 are treated as 1. Use NoJitter for none.
	Jitter float64
	// MaxElapsed bounds the time spent retrying one delivery: Retry does not
	// start a backoff that would end later than MaxElapsed after the first
	// attempt failed. Default 0: no bound beyond MaxAttempts.
	MaxElapsed time.Duration
	// ShouldRetry classifies an error: false stops retrying. It is not
	// consulted for permanent errors (transport.IsPermanent), which are
	// never retried, nor when ctx has ended. Default: retry every other
	// error.
	ShouldRetry func(error) bool
}

// NoJitter as RetryOptions.Jitter disables jitter.
const NoJitter = -1.0

func (o RetryOptions) withDefaults() RetryOptions {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.InitialInterval <= 0 {
		o.InitialInterval = 100 * time.Millisecond
	}
	if o.MaxInterval <= 0 {
		o.MaxInterval = 10 * time.Second
	}
	if o.MaxInterval < o.InitialInterval {
		o.MaxInterval = o.InitialInterval
	}
	if !(o.Multiplier >= 1) { // also catches NaN
		o.Multiplier = 2
	}
	switch {
	case o.Jitter == NoJitter:
		o.Jitter = 0
	case o.Jitter > 1:
		o.Jitter = 1
	case !(o.Jitter > 0):
		o.Jitter = 0.2
	}
	if o.MaxElapsed < 0 {
		o.MaxElapsed = 0
	}
	return o
}

// RetryError is what Retry returns when it gives up: the last handler error
// and how many handler calls were made. DeadLetter reads Attempts for its
// header. It unwraps to Err, so errors.Is, errors.As and
// transport.IsPermanent see through it.
type RetryError struct {
	Attempts int
	Err      error
}

func (e *RetryError) Error() string {
	// One "busway: " per chain (see package transport): the handler's
	// error may be busway's own, such as a failed bus.Publish.
	return fmt.Sprintf("busway: after %d attempt(s): %s", e.Attempts, strings.TrimPrefix(fmt.Sprint(e.Err), "busway: "))
}

func (e *RetryError) Unwrap() error { return e.Err }

// Attempts returns the number of handler calls recorded in err by Retry, or
// 1 when err carries no count (no Retry in the chain: one call was made).
// Attempts(nil) is 0.
func Attempts(err error) int {
	if err == nil {
		return 0
	}
	var re *RetryError
	if errors.As(err, &re) {
		return re.Attempts
	}
	return 1
}

type attemptKey struct{}

// RetryAttempt returns, inside Retry, which attempt of the current delivery
// is running: 1 for the first call, 2 for the first retry, and so on. Outside
// Retry it returns 1. Message.Attempt is the transport's delivery count,
// which Retry does not change.
func RetryAttempt(ctx context.Context) int {
	if n, ok := ctx.Value(attemptKey{}).(int); ok {
		return n
	}
	return 1
}

// Retry retries a failing handler in place, with exponential backoff and
// jitter, up to MaxAttempts calls and MaxElapsed time. Retrying in place
// keeps per-key order, which a broker redelivery (a NATS Nak) may not.
//
// Errors marked transport.Permanent (bus.Permanent; a body that does not
// decode) are never retried, nor errors ShouldRetry rejects. When ctx ends,
// during a backoff or an attempt, Retry stops at once. When it gives up it
// returns a *RetryError with the last error and the number of attempts; a
// ctx that ended is joined into it, so errors.Is(err, context.Canceled)
// holds.
//
// Place it inside DeadLetter (which then sees only what retrying could not
// fix) and Idempotent, and outside Timeout (one deadline per attempt), Limit
// (no slot held while sleeping) and Recover (panics are retried).
func Retry(opts RetryOptions) Middleware {
	o := opts.withDefaults()
	p := o.policy()
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			err := next(ctx, m)
			if err == nil {
				return nil
			}
			start := time.Now()
			for attempt := 1; ; attempt++ {
				if transport.IsPermanent(err) || !p.Retries(attempt) || ctx.Err() != nil ||
					(o.ShouldRetry != nil && !o.ShouldRetry(err)) {
					return giveUp(ctx, attempt, err)
				}
				wait, ok := p.Next(attempt, time.Since(start))
				if !ok || backoff.Sleep(ctx, wait) != nil {
					return giveUp(ctx, attempt, err)
				}
				if err = next(context.WithValue(ctx, attemptKey{}, attempt+1), m); err == nil {
					return nil
				}
			}
		}
	}
}

func giveUp(ctx context.Context, attempts int, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = errors.Join(err, cerr)
	}
	return &RetryError{Attempts: attempts, Err: err}
}

// policy is o, with its defaults applied, as the backoff.Policy that Retry
// follows.
func (o RetryOptions) policy() backoff.Policy {
	return backoff.Policy{InitialInterval: o.InitialInterval, MaxInterval: o.MaxInterval, Multiplier: o.Multiplier,
		Jitter: o.Jitter, MaxAttempts: o.MaxAttempts, MaxElapsed: o.MaxElapsed}
}
