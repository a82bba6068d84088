package bus

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// newV7's IDs are RFC 9562 version 7 UUIDs carrying the time in
// milliseconds, strictly increasing across goroutines, with random bits
// that differ.
func TestNewV7(t *testing.T) {
	now := time.Now()
	u := newV7(now)
	p, err := uuid.Parse(u.String())
	if err != nil || p.Version() != 7 || p.Variant() != uuid.RFC4122 {
		t.Fatalf("%v: parse error %v, version %v, variant %v", u, err, p.Version(), p.Variant())
	}
	// Its time is now's millisecond, or a little later when IDs made
	// before (in this process, in the same tick) were later still.
	if sec, nsec := p.Time().UnixTime(); time.Unix(sec, nsec).UnixMilli() < now.UnixMilli() || time.Unix(sec, nsec).After(now.Add(time.Second)) {
		t.Fatalf("%v carries time %v, want %v", u, time.Unix(sec, nsec).UTC(), now)
	}

	const goroutines, per = 4, 5000
	ids := make([][]uuid.UUID, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for range per {
				ids[g] = append(ids[g], newV7(time.Now()))
			}
		})
	}
	wg.Wait()
	seen := make(map[uuid.UUID]bool, goroutines*per)
	for _, list := range ids {
		for i, id := range list {
			if id.Version() != 7 || id.Variant() != uuid.RFC4122 {
				t.Fatalf("%v: version %v, variant %v", id, id.Version(), id.Variant())
			}
			if i > 0 && bytes.Compare(list[i-1][:8], id[:8]) >= 0 {
				t.Fatalf("timestamp of %v not after that of the ID made before it, %v", id, list[i-1])
			}
			if seen[id] {
				t.Fatalf("%v made twice", id)
			}
			seen[id] = true
		}
	}
}

// newV7 keeps the UUID on the stack.
func TestNewV7Allocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not checked under the race detector")
	}
	if n := testing.AllocsPerRun(100, func() { _ = newV7(time.Now()) }); n != 0 {
		t.Fatalf("newV7: %v allocations, want 0", n)
	}
}
