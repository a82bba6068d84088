package transport

import (
	"sync"
	"sync/atomic"
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
