package middleware

import (
	"context"

	"github.com/busway/busway/transport"
)

// Semaphore caps the number of handlers running at once across every
// subscription that shares it, for example to protect a database pool: one
// Semaphore per process (or per resource), passed to Limit in each
// subscription's chain. Safe for concurrent use.
type Semaphore struct {
	// slots holds one token per running holder. Its capacity is the limit:
	// the one channel in this package buffered beyond 1, because the buffer
	// is the semaphore.
	slots chan struct{}
}

// NewSemaphore returns a semaphore admitting n holders at once; n < 1 means 1.
func NewSemaphore(n int) *Semaphore {
	if n < 1 {
		n = 1
	}
	return &Semaphore{slots: make(chan struct{}, n)}
}

// Acquire takes a slot, waiting until one is free or ctx ends (then it
// returns ctx.Err() and holds nothing). A handler that waits tells its
// transport so (transport.Block): on chanbus, a handler that holds a slot
// and publishes more than a queue holds then does not wait for a handler
// that waits for its slot.
func (s *Semaphore) Acquire(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		return nil
	default:
	}
	unblock := transport.Block(ctx)
	defer unblock()
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TryAcquire takes a slot if one is free at once.
func (s *Semaphore) TryAcquire() bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// Release frees a slot taken by Acquire or TryAcquire. Releasing more than
// was acquired is a no-op rather than a panic.
func (s *Semaphore) Release() {
	select {
	case <-s.slots:
	default:
	}
}

// Cap returns the number of slots.
func (s *Semaphore) Cap() int { return cap(s.slots) }

// InUse returns the number of slots held now.
func (s *Semaphore) InUse() int { return len(s.slots) }

// Limit holds a slot of sem while the inner handler runs. Waiting for a slot
// respects ctx: when ctx ends first, the message fails with ctx.Err() and is
// redelivered (or retried by Retry while its ctx lasts). A nil sem means no
// limit.
//
// Place it inside Retry and Timeout, next to Recover, so that a slot is held
// only while the handler runs: not during Retry's backoff sleeps, which would
// starve other subscriptions of slots while doing nothing.
func Limit(sem *Semaphore) Middleware {
	return func(next transport.Handler) transport.Handler {
		if sem == nil {
			return next
		}
		return func(ctx context.Context, m *transport.Message) error {
			if err := sem.Acquire(ctx); err != nil {
				return err
			}
			defer sem.Release()
			return next(ctx, m)
		}
	}
}
