package clock

import (
	"testing"
	"time"
)

// TestNow: Now lies between two readings of time.Now taken around it (to
// its resolution, a microsecond), in the local zone as time.Now's is, and
// carries no monotonic reading.
func TestNow(t *testing.T) {
	for range 1000 {
		before := time.Now()
		got := Now()
		after := time.Now()
		if got.Before(before.Truncate(time.Microsecond)) || got.After(after) {
			t.Fatalf("Now() = %v, not between %v and %v", got, before, after)
		}
		if got != got.Round(0) {
			t.Fatalf("Now() = %v carries a monotonic reading", got)
		}
		if got.Location() != before.Location() {
			t.Fatalf("Now() is in %v, time.Now in %v", got.Location(), before.Location())
		}
	}
}

func BenchmarkNow(b *testing.B) {
	b.Run("clock", func(b *testing.B) {
		for range b.N {
			sink = Now()
		}
	})
	b.Run("time.Now", func(b *testing.B) {
		for range b.N {
			sink = time.Now()
		}
	})
}

var sink time.Time
