package middleware

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/busway/busway/transport"
)

// Store remembers which event IDs (EventID) a group has handled
// successfully: the inbox of the inbox pattern. The group matters: every
// group gets every message, so each group handles an ID once.
//
// There is one inbox concept in busway: this Store. Idempotent uses any
// Store and marks after the handler; SQLStore additionally records the ID in
// the same database transaction as the handler's own writes (HandleTx,
// Transactional), which makes the effects on that database exactly-once.
//
// Implementations are safe for concurrent use.
type Store interface {
	// Seen reports whether group has marked id as handled.
	Seen(ctx context.Context, group, id string) (bool, error)
	// Mark records that group handled id. Marking twice is not an error.
	Mark(ctx context.Context, group, id string) error
}

// IdempotentOptions configure Idempotent. The zero value means the defaults.
type IdempotentOptions struct {
	// OnMarkError is called when the handler succeeded but the store could
	// not record it. The message is still acknowledged (its effect is
	// done); a redelivery of it would be handled again. Default: ignore.
	OnMarkError func(ctx context.Context, m *transport.Message, err error)
}

// EventID returns the identity Idempotent and the inbox (SQLStore.HandleTx,
// SQLStore.Transactional) key on: the CloudEvents ce_id header when present,
// else Message.ID. ce_id is the event's identity and Message.ID the identity
// of one publish: an event sent again under a new Message.ID (a replay, the
// same event on a second topic) is still the same event for the handler.
// Empty when the message has neither.
func EventID(m *transport.Message) string {
	if id := m.Header[transport.HeaderID]; id != "" {
		return id
	}
	return m.ID
}

// Idempotent skips a message whose event ID (EventID: ce_id, else
// Message.ID) its group already handled successfully, acknowledging it
// without calling the handler, and marks the ID in store after the handler
// returned nil (never before, and never after a failure). A message without
// an ID is always handled. A store error on
// lookup fails the message (it is redelivered); a nil store, too, with an
// error wrapping transport.ErrInvalidOptions.
//
// It removes the duplicates that at-least-once delivery produces on
// redelivery (a crash between handling and acknowledging, an outbox relay
// publishing twice). Two copies of one ID handled at the same moment by two
// members of a group may both run; per-key ordering (same Key, same ID)
// prevents that within a subscription.
//
// Place it inside DeadLetter, so a dead-lettered message is not marked
// handled and can be replayed, and outside Retry, so the store is consulted
// once per delivery rather than per attempt.
func Idempotent(store Store, opts IdempotentOptions) Middleware {
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			id := EventID(m)
			if id == "" {
				return next(ctx, m)
			}
			if store == nil {
				return fmt.Errorf("%w: Idempotent has a nil Store", transport.ErrInvalidOptions)
			}
			seen, err := store.Seen(ctx, m.Group, id)
			if err != nil {
				return fmt.Errorf("busway: idempotency store lookup of %q: %w", id, err)
			}
			if seen {
				if r := reportFrom(ctx); r != nil {
					r.duplicate = true
				}
				return nil
			}
			if err := next(ctx, m); err != nil {
				return err
			}
			if err := store.Mark(ctx, m.Group, id); err != nil && opts.OnMarkError != nil {
				opts.OnMarkError(ctx, m, err)
			}
			return nil
		}
	}
}

// MemoryStoreOptions configure NewMemoryStore. The zero value means the
// defaults.
type MemoryStoreOptions struct {
	// MaxEntries bounds the number of remembered IDs; beyond it the least
	// recently seen are forgotten. Default 100000.
	MaxEntries int
	// TTL is how long an ID is remembered after it was marked. Default 24h.
	TTL time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// MemoryStore is a bounded in-process Store: at most MaxEntries IDs, each
// for at most TTL, least recently used forgotten first. It forgets
// everything on restart, so it suits one process that wants to drop quick
// redeliveries; use SQLStore to survive restarts and share among processes.
// Safe for concurrent use.
type MemoryStore struct {
	max int
	ttl time.Duration
	now func() time.Time

	mu  sync.Mutex
	lru *list.List // of *memEntry, most recently used at the front
	idx map[memKey]*list.Element
}

type memKey struct{ group, id string }

type memEntry struct {
	key     memKey
	expires time.Time
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore(opts MemoryStoreOptions) *MemoryStore {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 100_000
	}
	if opts.TTL <= 0 {
		opts.TTL = 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &MemoryStore{max: opts.MaxEntries, ttl: opts.TTL, now: opts.Now,
		lru: list.New(), idx: make(map[memKey]*list.Element)}
}

// Seen reports whether (group, id) was marked within the TTL.
func (s *MemoryStore) Seen(_ context.Context, group, id string) (bool, error) {
	k := memKey{group, id}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.idx[k]
	if !ok {
		return false, nil
	}
	if !s.now().Before(e.Value.(*memEntry).expires) {
		s.lru.Remove(e)
		delete(s.idx, k)
		return false, nil
	}
	s.lru.MoveToFront(e)
	return true, nil
}

// Mark remembers (group, id) for the TTL, forgetting expired and then
// least recently used entries beyond MaxEntries.
func (s *MemoryStore) Mark(_ context.Context, group, id string) error {
	k := memKey{group, id}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.idx[k]; ok {
		e.Value.(*memEntry).expires = now.Add(s.ttl)
		s.lru.MoveToFront(e)
		return nil
	}
	s.idx[k] = s.lru.PushFront(&memEntry{key: k, expires: now.Add(s.ttl)})
	for s.lru.Len() > s.max {
		s.evict(s.lru.Back())
	}
	// Drop a few expired entries from the back on each Mark, so memory
	// follows the TTL without a background goroutine.
	for i := 0; i < 4; i++ {
		b := s.lru.Back()
		if b == nil || now.Before(b.Value.(*memEntry).expires) {
			break
		}
		s.evict(b)
	}
	return nil
}

func (s *MemoryStore) evict(e *list.Element) {
	s.lru.Remove(e)
	delete(s.idx, e.Value.(*memEntry).key)
}

// Len returns the number of IDs remembered now (expired ones included until
// they are dropped).
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}
