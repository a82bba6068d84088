package busfx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/busway/busway/transport"
)

// ErrNotStarted is returned by the Module's transport when it is used
// before the fx app started (the transport opens in OnStart, as fx
// expects of anything that starts goroutines or connects).
var ErrNotStarted = errors.New("transport not open: the fx app has not started")

// lazyTransport is the transport.Transport the Module provides: it opens
// the configured URL in OnStart and, when closed (by bus.Shutdown, after
// the handlers drained), first stops what must stop before the transport
// goes (outbox relays), then closes it.
type lazyTransport struct {
	mux     *transport.Mux
	cfg     Config
	t       atomic.Pointer[transport.Transport]
	mu      sync.Mutex
	stops   []func(context.Context) error // run before the transport closes, last added first
	closing bool
	closed  chan struct{}
	err     error
}

var _ transport.Transport = (*lazyTransport)(nil)

func newLazy(mux *transport.Mux, cfg Config) *lazyTransport {
	return &lazyTransport{mux: mux, cfg: cfg, closed: make(chan struct{})}
}

func (l *lazyTransport) open(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return fmt.Errorf("busway: open %s: %w", EnvURL, transport.ErrClosed)
	}
	if l.t.Load() != nil {
		return nil
	}
	t, err := l.mux.Open(ctx, l.cfg.url())
	if err != nil {
		// The transport's error names the URL and its bad part, and begins
		// with "busway: " or the transport's name.
		return fmt.Errorf("%w (from %s)", err, EnvURL)
	}
	l.t.Store(&t)
	return nil
}

func (l *lazyTransport) get() (transport.Transport, error) {
	if p := l.t.Load(); p != nil {
		return *p, nil
	}
	select {
	case <-l.closed:
		return nil, transport.ErrClosed
	default:
		return nil, fmt.Errorf("busway: %w", ErrNotStarted)
	}
}

func (l *lazyTransport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	t, err := l.get()
	if err != nil {
		return err
	}
	return t.Publish(ctx, topic, msgs...)
}

func (l *lazyTransport) Subscribe(ctx context.Context, topic string, h transport.Handler, opts transport.SubscribeOptions) (transport.Subscription, error) {
	t, err := l.get()
	if err != nil {
		return nil, err
	}
	return t.Subscribe(ctx, topic, h, opts)
}

// Unwrap returns the opened transport, nil before OnStart, for the
// capabilities of a particular transport (chanbus's WaitIdle).
func (l *lazyTransport) Unwrap() transport.Transport {
	t, _ := l.get()
	return t
}

// beforeClose adds f to what Close runs before closing the transport.
func (l *lazyTransport) beforeClose(f func(context.Context) error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stops = append(l.stops, f)
}

// Close runs the beforeClose functions (last added first, within the
// shutdown timeout) and then closes the transport. It is idempotent: a
// later call waits for the first and returns its result.
func (l *lazyTransport) Close() error {
	_, err := l.close()
	return err
}

// close is Close that also reports whether this call did the closing.
func (l *lazyTransport) close() (first bool, err error) {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		<-l.closed
		return false, l.err
	}
	l.closing = true
	stops := l.stops
	l.mu.Unlock()

	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.shutdownTimeout())
	for i := len(stops) - 1; i >= 0; i-- {
		errs = append(errs, stops[i](ctx))
	}
	cancel()
	if p := l.t.Load(); p != nil { // a closed transport answers ErrClosed itself
		errs = append(errs, (*p).Close())
	}
	l.err = errors.Join(errs...)
	close(l.closed)
	return true, l.err
}
