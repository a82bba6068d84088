package bus

import (
	"context"
	"sync"
	"testing"

	"github.com/busway/busway/transport"
)

// uncomparableCtx is a context type that == cannot compare (it holds a
// map), passed by value.
type uncomparableCtx struct {
	context.Context
	m map[string]int
}

func TestSysContexts(t *testing.T) {
	c := newSysContexts("chanbus")
	type key struct{}
	parents := make([]context.Context, 3*len(c.slots))
	cancels := make([]context.CancelFunc, len(parents))
	for i := range parents {
		parents[i], cancels[i] = context.WithCancel(context.WithValue(context.Background(), key{}, i))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for n := range 2000 {
				i := (n*7 + g) % len(parents)
				ctx := c.get(parents[i])
				if got := transport.SystemFromContext(ctx); got != "chanbus" {
					t.Errorf("system %q, want chanbus", got)
					return
				}
				if got := ctx.Value(key{}); got != i {
					t.Errorf("derived context of parent %d carries its value %v", i, got)
					return
				}
			}
		})
	}
	wg.Wait()
	// The derived context is cancelled with its parent, also one reused.
	ctx := c.get(parents[0])
	ctx2 := c.get(parents[0])
	cancels[0]()
	for _, x := range []context.Context{ctx, ctx2} {
		select {
		case <-x.Done():
		default:
			t.Fatal("derived context not cancelled with its parent")
		}
	}
	for _, cancel := range cancels {
		cancel()
	}
	// A context of an uncomparable type is derived, not compared.
	u := uncomparableCtx{Context: context.Background(), m: map[string]int{}}
	if got := transport.SystemFromContext(c.get(u)); got != "chanbus" {
		t.Fatalf("uncomparable parent: system %q", got)
	}
	if got := transport.SystemFromContext(c.get(u)); got != "chanbus" {
		t.Fatalf("uncomparable parent, again: system %q", got)
	}
}

// A parent seen before costs no allocation.
func TestSysContextsReuseAllocates(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not checked under the race detector")
	}
	c := newSysContexts("chanbus")
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.get(parent)
	if n := testing.AllocsPerRun(100, func() { c.get(parent) }); n != 0 {
		t.Fatalf("%v allocations for a parent seen before, want 0", n)
	}
}
