package middleware

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/busway/busway/transport"
)

// PanicError is a handler panic turned into an error by Recover (the same
// type transports use when they recover a panic themselves). Test for it
// with errors.As.
type PanicError = transport.PanicError

// goexitMemory is how many messages whose handler ended with
// runtime.Goexit one Recover remembers until they are delivered again.
const goexitMemory = 1024

// Recover turns a handler panic into a *PanicError carrying the panic value
// and stack, so the process survives and the message is treated as failed:
// Retry retries it, DeadLetter records it with the panic reason.
//
// Place it innermost, next to the handler, so that every other middleware
// sees the panic as an ordinary error. A panic with a nil value
// (panic(nil)) is reported as a *runtime.PanicNilError, as Go 1.21+ does.
//
// A handler that ends its goroutine with runtime.Goexit (t.FailNow or
// t.Fatal in a handler) cannot be turned into an error on that attempt: Go
// cannot stop a Goexit, so it unwinds through every middleware and the
// transport counts the attempt as failed and delivers the message again
// (transport.ErrHandlerGoexit). Recover remembers such a message (by
// topic, group and ID; the last 1024) and fails its next delivery
// permanently without running the handler again, so the chain outside sees
// an error wrapping transport.ErrHandlerGoexit: Retry does not retry it and
// DeadLetter records it, instead of the transport redelivering it until its
// own limit (or, on chanbus, for ever). A redelivery that reaches another
// process's Recover runs the handler there once more.
func Recover() Middleware {
	exited := &goexits{keys: make(map[string]struct{})}
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			// The key is built only when needed: remembered keys are rare,
			// and building it for every message cost an allocation.
			topic, group, id := m.Topic, m.Group, m.ID
			if id != "" && exited.n.Load() > 0 && exited.take(goexitKey(topic, group, id)) {
				return transport.Permanent(fmt.Errorf("attempt %d not run, an earlier one ended so: %w",
					m.Attempt, transport.ErrHandlerGoexit))
			}
			returned := false
			defer func() {
				// CallHandler returns normally after a panic: not returning
				// here is a Goexit unwinding this goroutine.
				if !returned && id != "" {
					exited.add(goexitKey(topic, group, id))
				}
			}()
			err := transport.CallHandler(ctx, nil, next, m)
			returned = true
			return err
		}
	}
}

func goexitKey(topic, group, id string) string { return topic + "\x00" + group + "\x00" + id }

// goexits is a bounded set of message keys, oldest forgotten first.
type goexits struct {
	n     atomic.Int32 // len(keys), read without mu
	mu    sync.Mutex
	keys  map[string]struct{}
	order []string // insertion order; may hold keys already taken
}

func (g *goexits) add(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.keys[key]; ok {
		return
	}
	for len(g.keys) >= goexitMemory && len(g.order) > 0 {
		delete(g.keys, g.order[0])
		g.order = g.order[1:]
	}
	g.keys[key] = struct{}{}
	g.order = append(g.order, key)
	g.n.Store(int32(len(g.keys)))
}

// take reports whether key is in the set, removing it.
func (g *goexits) take(key string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.keys) == 0 {
		return false
	}
	if _, ok := g.keys[key]; !ok {
		return false
	}
	delete(g.keys, key)
	g.n.Store(int32(len(g.keys)))
	if len(g.keys) == 0 {
		g.order = g.order[:0]
	}
	return true
}
