package chanbus

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/busway/busway/transport"
)

var (
	_ transport.Transport     = (*Transport)(nil)
	_ transport.PublishCopier = (*Transport)(nil)
)

// Transport is the in-process transport. Safe for concurrent use.
type Transport struct {
	cfg config
	log *slog.Logger

	closer transport.CloseOnce
	// topics maps each topic to its groups. Publish reads it without a
	// lock; Subscribe and leave replace it (map and slices are never
	// changed once stored) while they hold mu.
	topics atomic.Pointer[map[string][]*group]
	mu     sync.Mutex
	subs   map[*subscription]struct{}

	pend     pending       // for WaitIdle and WaitSettled
	unrouted atomic.Uint64 // messages published to a topic without groups
	waits    waits
}

// New returns a Transport. It starts no goroutine until Subscribe.
func New(opts ...Option) *Transport {
	c := newConfig(opts)
	log := c.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Transport{
		cfg:  c,
		log:  log,
		subs: make(map[*subscription]struct{}),
	}
	t.topics.Store(&map[string][]*group{})
	return t
}

// groups returns the groups of topic.
func (t *Transport) groups(topic string) []*group { return (*t.topics.Load())[topic] }

// setGroups makes groups topic's groups (none: the topic is removed).
// t.mu is held.
func (t *Transport) setGroups(topic string, groups []*group) {
	m := maps.Clone(*t.topics.Load())
	if len(groups) == 0 {
		delete(m, topic)
	} else {
		m[topic] = groups
	}
	t.topics.Store(&m)
}

// Close closes every subscription, waiting for their running handlers (and
// cancelling their context once the drain timeout has passed, see
// WithDrainTimeout), and makes Publish and Subscribe return ErrClosed. When
// the drain timeout abandoned running handlers, it returns the
// subscriptions' context errors, joined (errors.Is(err,
// context.DeadlineExceeded)): their messages, and those still queued for
// their groups, are lost. Idempotent; a concurrent call waits for the first
// and returns its error.
func (t *Transport) Close() error { return t.closer.Do(t.close) }

func (t *Transport) close() error {
	t.mu.Lock()
	subs := slices.Collect(maps.Keys(t.subs))
	t.mu.Unlock()
	return transport.CloseSubscriptions(subs, t.cfg.drain, func(s *subscription) string {
		return fmt.Sprintf("chanbus: close subscription to %q (group %q)", s.g.topic, s.g.name)
	})
}

// WaitIdle returns nil once every message published so far has been
// acknowledged (its handler returned nil), dropped (its group was removed),
// or is waiting in retry backoff after a handler error; or ctx's error when
// ctx ends first.
func (t *Transport) WaitIdle(ctx context.Context) error {
	return t.pend.wait(ctx, idleCount)
}

// WaitSettled returns nil once every message published so far has been
// acknowledged or dropped; unlike WaitIdle it also waits for messages in
// retry backoff to be delivered again and succeed. A message whose handler
// keeps failing keeps it waiting until ctx ends.
func (t *Transport) WaitSettled(ctx context.Context) error {
	return t.pend.wait(ctx, unackedCount)
}

// Stats are counters of a Transport since New.
type Stats struct {
	// Unrouted counts messages published to a topic that no group
	// subscribed to, which chanbus drops (Publish returns nil): a
	// dead-letter topic nobody reads, a typo in a topic name.
	Unrouted uint64
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats { return Stats{Unrouted: t.unrouted.Load()} }
