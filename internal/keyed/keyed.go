// Package keyed runs functions on a fixed set of workers sharded by key:
// functions with the same non-empty key run one at a time in submit order;
// functions with different keys (or no key) run in parallel, up to the
// number of workers. Transports use it to keep per-key order under
// Concurrency > 1.
package keyed

import (
	"context"
	"errors"
	"hash/fnv"
	"sync"
)

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("keyed: pool closed")

// Pool is a fixed set of workers, each with a bounded queue.
type Pool struct {
	shards []chan func()
	any    chan func() // functions without a key: the first idle worker takes them
	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup
}

// New starts a pool of workers (at least 1), each with a queue of depth
// (at least 0) functions waiting beyond the one it runs. Submit blocks
// while the chosen queue is full, which is how a slow handler slows the
// fetching that feeds the pool.
func New(workers, depth int) *Pool {
	if workers < 1 {
		workers = 1
	}
	if depth < 0 {
		depth = 0
	}
	p := &Pool{shards: make([]chan func(), workers), any: make(chan func())}
	for i := range p.shards {
		// Buffered to depth so a fetcher can keep a few messages per key
		// ready; bounded, so memory is too.
		p.shards[i] = make(chan func(), depth)
	}
	p.wg.Add(workers)
	for i := range p.shards {
		go p.work(p.shards[i])
	}
	return p
}

func (p *Pool) work(own chan func()) {
	defer p.wg.Done()
	anyq := p.any
	for own != nil || anyq != nil {
		select {
		case fn, ok := <-own:
			if !ok {
				own = nil
				continue
			}
			fn()
		case fn, ok := <-anyq:
			if !ok {
				anyq = nil
				continue
			}
			fn()
		}
	}
}

// shard returns the worker index of key among n workers (FNV-1a).
func shard(key string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// Submit queues fn on the worker of key (any idle worker when key is
// empty), blocking while that queue is full until ctx ends. It returns
// ctx.Err() or ErrClosed when fn was not queued.
func (p *Pool) Submit(ctx context.Context, key string, fn func()) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	q := p.any
	if key != "" {
		q = p.shards[shard(key, len(p.shards))]
	}
	select {
	case q <- fn:
		return nil
	default:
	}
	select {
	case q <- fn:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops accepting functions, lets the workers run every queued
// function, and waits for them. Idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		for _, q := range p.shards {
			close(q)
		}
		close(p.any)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
