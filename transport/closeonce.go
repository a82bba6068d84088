package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// CloseOnce is the closed state of a Transport (or anything with a Close
// that must run once), the one idiom every busway transport uses:
//
//	type Transport struct{ closer transport.CloseOnce; ... }
//
//	func (t *Transport) Publish(...) error {
//		if t.closer.Closed() { return fmt.Errorf("mybroker: publish: %w", transport.ErrClosed) }
//		...
//	}
//	func (t *Transport) Close() error { return t.closer.Do(t.close) }
//
// Its zero value is open. Safe for concurrent use.
type CloseOnce struct {
	closed atomic.Bool
	once   sync.Once
	err    error
}

// Closed reports whether Close has begun: once it returns true, it always
// does. An operation that checks Closed under a lock that the close
// function takes afterwards (to collect the open subscriptions, say) is
// either seen by the close function or sees Closed true.
func (c *CloseOnce) Closed() bool { return c.closed.Load() }

// Do marks c closed, then runs close, once: the first call runs it, and
// every call, concurrent ones included, returns after it has returned, with
// its error.
func (c *CloseOnce) Do(close func() error) error {
	c.once.Do(func() {
		c.closed.Store(true)
		c.err = close()
	})
	return c.err
}

// CloseSubscriptions is the drain of a Transport.Close: it closes subs
// together, each as Subscription.Close does with a context that ends after
// drain, waits for all of them and returns their errors joined. name, when
// not nil, describes a subscription for its error ("nats: close
// subscription to \"orders\" (group \"billing\")").
func CloseSubscriptions[S Subscription](subs []S, drain time.Duration, name func(S) string) error {
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	errs := make([]error, len(subs))
	var wg sync.WaitGroup
	for i, s := range subs {
		wg.Go(func() {
			if err := s.Close(ctx); err != nil && name != nil {
				errs[i] = fmt.Errorf("%s: %w", name(s), err)
			} else {
				errs[i] = err
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
