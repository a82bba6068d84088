package bus

import (
	"context"
	"reflect"
	"sync/atomic"

	"github.com/busway/busway/transport"
)

// sysContexts gives a route's handlers their context with the transport's
// messaging system in it (transport.ContextWithSystem), for the middleware
// that report it. Deriving that context costs two allocations, and a
// transport calls a subscription's handlers with a few contexts only (one
// per worker or partition), so it derives one per parent context it sees
// and reuses it for that parent's later messages: the derived context is
// the same whichever message it is derived for.
//
// It remembers the last len(slots) parents; with more (more workers than
// slots, or a transport that gives every message a context of its own),
// the parents it does not remember cost their two allocations again.
// Safe for concurrent use.
type sysContexts struct {
	system string
	slots  [8]atomic.Pointer[sysContext]
	next   atomic.Uint32 // the slot the next new parent replaces
}

type sysContext struct {
	parent, ctx context.Context
}

func newSysContexts(system string) *sysContexts { return &sysContexts{system: system} }

// get returns transport.ContextWithSystem(parent, c.system).
func (c *sysContexts) get(parent context.Context) context.Context {
	// An uncomparable context type (a struct holding a map, passed by
	// value) would make == panic: such contexts are derived each time.
	if t := reflect.TypeOf(parent); t == nil || !t.Comparable() {
		return transport.ContextWithSystem(parent, c.system)
	}
	for i := range c.slots {
		if s := c.slots[i].Load(); s != nil && s.parent == parent {
			return s.ctx
		}
	}
	ctx := transport.ContextWithSystem(parent, c.system)
	c.slots[c.next.Add(1)%uint32(len(c.slots))].Store(&sysContext{parent: parent, ctx: ctx})
	return ctx
}
