package middleware

import (
	"context"
	"fmt"
	"sync"

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
			key := ""
			if m.ID != "" {
				key = m.Topic + "\x00" + m.Group + "\x00" + m.ID
				if exited.take(key) {
					return transport.Permanent(fmt.Errorf("attempt %d not run, an earlier one ended so: %w",
						m.Attempt, transport.ErrHandlerGoexit))
				}
			}
			returned := false
			defer func() {
				// CallHandler returns normally after a panic: not returning
				// here is a Goexit unwinding this goroutine.
				if !returned && key != "" {
					exited.add(key)
				}
			}()
			err := transport.CallHandler(ctx, nil, next, m)
			returned = true
			return err
		}
	}
}

// goexits is a bounded set of message keys, oldest forgotten first.
type goexits struct {
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
	if len(g.keys) == 0 {
		g.order = g.order[:0]
	}
	return true
}
