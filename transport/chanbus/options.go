package chanbus

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"slices"
	"time"

	"github.com/busway/busway/transport"
)

// Scheme is the URL scheme of chanbus: "chan://".
const Scheme = "chan"

// Defaults of the options.
const (
	// MaxURLQueue bounds buffer x shards in a chan:// URL (how many
	// messages a group may queue, so a typo in a URL cannot let it grow
	// until the process dies); WithBuffer and WithShards take larger
	// values.
	MaxURLQueue   = 1 << 22
	DefaultBuffer = 64
	// DefaultShards is 8: at most 512 messages wait in a group by default,
	// besides those its workers took (a worker takes a key's waiting
	// messages at once, up to 64).
	// With 16 (1024 messages), copies of 4 KiB bodies missed the cache
	// more often (about 0.2 µs a message more, benchmarks/ InProc) and
	// nothing got faster: a Publish that finds its group full waits for the
	// workers either way.
	DefaultShards     = 8
	DefaultBackoffMin = 10 * time.Millisecond
	DefaultBackoffMax = time.Second
	// DefaultDrainTimeout is how long Transport.Close waits for running
	// handlers before it cancels their context.
	DefaultDrainTimeout = 30 * time.Second
)

// batchPerTurn is how many messages of one key a worker handles in a row
// while other keys wait for a worker (dispatch.Config.Turn).
const batchPerTurn = 64

// Option configures a Transport.
type Option func(*config)

type config struct {
	buffer     int
	shards     int
	backoffMin time.Duration
	backoffMax time.Duration
	drain      time.Duration
	logger     *slog.Logger
}

// WithBuffer sets how many messages of one key may wait in a group (queued,
// not yet taken by a worker) before a Publish of that key blocks. Default
// DefaultBuffer (64); values below 1 mean the default.
func WithBuffer(n int) Option {
	return func(c *config) {
		if n >= 1 {
			c.buffer = n
		}
	}
}

// WithShards sets how many keys' buffers a group's bound holds: a group
// queues at most buffer x shards messages waiting in all (messages without
// a key included) before Publish blocks. It does not bound how many keys
// are handled in parallel: every key has its own queue, and Concurrency
// bounds the parallel handlers. Default DefaultShards (8); values below 1
// mean the default.
func WithShards(n int) Option {
	return func(c *config) {
		if n >= 1 {
			c.shards = n
		}
	}
}

// WithBackoff sets the delay before a failed message is delivered again:
// min after the first failure, doubling with each further failure, at most
// max, without jitter and without a cap on attempts (a backoff.Policy
// with InitialInterval min and MaxInterval max). Default DefaultBackoffMin (10ms) and DefaultBackoffMax (1s); a min
// of 0 or less means the default, a max below min means min.
func WithBackoff(min, max time.Duration) Option {
	return func(c *config) { c.backoffMin, c.backoffMax = min, max }
}

// WithDrainTimeout sets how long Transport.Close waits for running handlers
// to return before it cancels their context (and then waits for them to
// return). Default DefaultDrainTimeout (30s); values below 0 mean the
// default, 0 cancels at once.
func WithDrainTimeout(d time.Duration) Option {
	return func(c *config) {
		if d >= 0 {
			c.drain = d
		}
	}
}

// WithLogger sets the logger for handler failures and dropped messages.
// Default: nil, which discards.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// newConfig applies opts to the defaults.
func newConfig(opts []Option) config {
	c := config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: DefaultDrainTimeout}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.backoffMin <= 0 {
		c.backoffMin = DefaultBackoffMin
	}
	if c.backoffMax < c.backoffMin {
		c.backoffMax = c.backoffMin
	}
	return c
}

// keyLimit and groupLimit are the bounds of a group's dispatcher: buffer
// messages of one key, buffer x shards in all (saturating).
func (c *config) keyLimit() int { return c.buffer }

func (c *config) groupLimit() int {
	if c.shards > math.MaxInt/c.buffer {
		return math.MaxInt
	}
	return c.buffer * c.shards
}

// urlShape is the shape of "chan://" URLs: no host, no user, no path.
var urlShape = transport.URLShape{Scheme: Scheme, HostHint: "chan:// takes no host (write chan:// or chan://?buffer=64)",
	NoUser: true, PathHint: "chan:// takes no path"}

// Opener returns the opener of "chan://" URLs, for a transport.Mux. Query
// options: buffer (WithBuffer), shards (WithShards), backoff_min and
// backoff_max (WithBackoff, as Go durations: "10ms"), drain_timeout
// (WithDrainTimeout); unknown options,
// a host or a path are errors.
func Opener() transport.Opener { return &URLOpener{} }

// URLOpener opens "chan://" URLs (see Opener) with settings a URL cannot
// carry. Its zero value opens URLs as Opener's does. Every transport has
// an opener of this shape (Logger, and TLS and defaults where they apply),
// so that busway.NewMux can give them all the same logger.
type URLOpener struct {
	// Logger is the WithLogger of the transports it opens. Default nil:
	// discard.
	Logger *slog.Logger
	// Options are the defaults of the transports it opens: the URL's
	// options override them. Default none.
	Options []Option
}

// OpenTransport parses u as Opener does and calls New with o.Options, the
// URL's options and o.Logger, in that order.
func (o *URLOpener) OpenTransport(ctx context.Context, u *url.URL) (transport.Transport, error) {
	var extra []Option
	if o.Logger != nil {
		extra = append(extra, WithLogger(o.Logger))
	}
	return openWith(u, o.Options, extra...)
}

func openWith(u *url.URL, defaults []Option, extra ...Option) (transport.Transport, error) {
	if err := transport.CheckURL(u, urlShape); err != nil {
		return nil, err
	}
	def := newConfig(defaults)
	q := transport.NewQuery(u)
	buffer := q.Int("buffer", def.buffer)
	if buffer < 1 {
		q.Fail("buffer", fmt.Errorf("%w: %d, want at least 1", transport.ErrInvalidURL, buffer))
	}
	shards := q.Int("shards", def.shards)
	if shards < 1 {
		q.Fail("shards", fmt.Errorf("%w: %d, want at least 1", transport.ErrInvalidURL, shards))
	}
	bmin := q.Duration("backoff_min", def.backoffMin)
	if bmin <= 0 {
		q.Fail("backoff_min", fmt.Errorf("%w: %v, want more than 0", transport.ErrInvalidURL, bmin))
	}
	bmax := q.Duration("backoff_max", def.backoffMax)
	if bmax < bmin {
		q.Fail("backoff_max", fmt.Errorf("%w: %v is less than backoff_min %v", transport.ErrInvalidURL, bmax, bmin))
	}
	if buffer >= 1 && shards >= 1 && (buffer > MaxURLQueue || shards > MaxURLQueue || buffer*shards > MaxURLQueue) {
		// A group may queue shards x buffer messages: a typo in a URL must
		// not become a bound that lets memory grow until the process dies.
		name := "buffer" // the option the URL gave (buffer when both or neither)
		if !q.Has("buffer") && q.Has("shards") {
			name = "shards"
		}
		q.Fail(name, fmt.Errorf("%w: buffer %d x shards %d is more than %d queued messages per group", transport.ErrInvalidURL, buffer, shards, MaxURLQueue))
	}
	drain := q.Duration("drain_timeout", def.drain)
	if drain < 0 {
		q.Fail("drain_timeout", fmt.Errorf("%w: %v is negative", transport.ErrInvalidURL, drain))
	}
	if err := q.Err(); err != nil {
		return nil, err
	}
	opts := append(slices.Clip(defaults), WithBuffer(buffer), WithShards(shards), WithBackoff(bmin, bmax), WithDrainTimeout(drain))
	return New(append(opts, extra...)...), nil
}
