package backoff_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/busway/busway/transport/backoff"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ms = time.Millisecond

func TestDelay(t *testing.T) {
	for _, c := range []struct {
		name string
		p    backoff.Policy
		want []time.Duration // after failure 1, 2, ...
	}{
		{"zero value", backoff.Policy{}, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 6400 * ms, 10 * time.Second, 10 * time.Second}},
		{"chanbus defaults", backoff.Policy{InitialInterval: 10 * ms, MaxInterval: time.Second}, []time.Duration{10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, time.Second}},
		{"multiplier 3", backoff.Policy{InitialInterval: 2 * ms, MaxInterval: 20 * ms, Multiplier: 3}, []time.Duration{2 * ms, 6 * ms, 18 * ms, 20 * ms}},
		{"multiplier 1", backoff.Policy{InitialInterval: 5 * ms, Multiplier: 1}, []time.Duration{5 * ms, 5 * ms, 5 * ms}},
		{"max below initial", backoff.Policy{InitialInterval: 5 * ms, MaxInterval: ms}, []time.Duration{5 * ms, 5 * ms}},
		{"NaN multiplier", backoff.Policy{InitialInterval: ms, Multiplier: math.NaN()}, []time.Duration{ms, 2 * ms, 4 * ms}},
		{"delays, last repeated", backoff.Policy{Delays: []time.Duration{100 * ms, 500 * ms, 2 * time.Second}}, []time.Duration{100 * ms, 500 * ms, 2 * time.Second, 2 * time.Second}},
		{"zero delay", backoff.Policy{Delays: []time.Duration{0}, Jitter: 1}, []time.Duration{0, 0}},
	} {
		t.Run(c.name, func(t *testing.T) {
			for i, want := range c.want {
				if got := c.p.Delay(i + 1); got != want {
					t.Errorf("Delay(%d) = %v, want %v", i+1, got, want)
				}
			}
			if got := c.p.Delay(0); got != c.want[0] {
				t.Errorf("Delay(0) = %v, want Delay(1) %v", got, c.want[0])
			}
		})
	}
	t.Run("many failures", func(t *testing.T) {
		p := backoff.Policy{InitialInterval: ms, MaxInterval: time.Minute}
		for _, n := range []int{64, 1 << 20, math.MaxInt} {
			if got := p.Delay(n); got != time.Minute {
				t.Errorf("Delay(%d) = %v, want the cap", n, got)
			}
		}
	})
}

func TestJitter(t *testing.T) {
	p := backoff.Policy{InitialInterval: 100 * ms, Jitter: 0.2}
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := p.Delay(1)
		if d < 80*ms || d > 120*ms {
			t.Fatalf("jittered delay %v outside [80ms, 120ms]", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct delays out of 1000: not jittered", len(seen))
	}
	p.Jitter = 5 // means 1: never negative
	for range 1000 {
		if d := p.Delay(1); d < 0 || d > 200*ms {
			t.Fatalf("delay %v with Jitter above 1", d)
		}
	}
}

func TestNext(t *testing.T) {
	p := backoff.Policy{InitialInterval: 10 * ms, MaxAttempts: 3}
	for failures, want := range map[int]bool{1: true, 2: true, 3: false, 4: false} {
		if _, ok := p.Next(failures, 0); ok != want {
			t.Errorf("MaxAttempts 3, Next(%d): %v, want %v", failures, ok, want)
		}
	}
	p = backoff.Policy{InitialInterval: 10 * ms, MaxElapsed: 25 * ms}
	if d, ok := p.Next(1, 0); !ok || d != 10*ms {
		t.Errorf("Next(1, 0) = %v, %v", d, ok)
	}
	if _, ok := p.Next(1, 16*ms); ok {
		t.Error("a delay ending after MaxElapsed was allowed")
	}
	if _, ok := (backoff.Policy{MaxAttempts: -1}).Next(1000, time.Hour); !ok {
		t.Error("negative MaxAttempts capped the attempts")
	}
}

func TestSleep(t *testing.T) {
	if err := backoff.Sleep(t.Context(), ms); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := backoff.Sleep(ctx, time.Hour); err != context.Canceled {
		t.Fatalf("Sleep with a cancelled ctx: %v, want context.Canceled as it is", err)
	}
	if err := backoff.Sleep(ctx, 0); err != context.Canceled {
		t.Fatalf("Sleep(0) with a cancelled ctx: %v", err)
	}
	if err := backoff.Sleep(t.Context(), -time.Second); err != nil {
		t.Fatalf("Sleep(-1s): %v", err)
	}
	dctx, dcancel := context.WithTimeout(t.Context(), ms)
	defer dcancel()
	if err := backoff.Sleep(dctx, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sleep past the deadline: %v", err)
	}
}

// TestNoAllocs: the policy's methods allocate nothing, jitter and Delays
// included, so every place that computes a delay per failure stays free
// of garbage.
func TestNoAllocs(t *testing.T) {
	for name, p := range map[string]backoff.Policy{
		"exponential": {InitialInterval: ms, MaxInterval: time.Second, Multiplier: 1.5, Jitter: 0.2, MaxAttempts: 100, MaxElapsed: time.Hour},
		"delays":      {Delays: []time.Duration{ms, 2 * ms, 5 * ms}, Jitter: 0.1},
	} {
		n := 0
		if a := testing.AllocsPerRun(1000, func() {
			n++
			_ = p.Delay(n % 40)
			_, _ = p.Next(n%40, time.Duration(n))
		}); a != 0 {
			t.Errorf("%s: %v allocations per Delay+Next", name, a)
		}
	}
	if a := testing.AllocsPerRun(1000, func() { _ = backoff.Sleep(context.Background(), 0) }); a != 0 {
		t.Errorf("Sleep(0): %v allocations", a)
	}
}

func BenchmarkDelay(b *testing.B) {
	p := backoff.Policy{InitialInterval: ms, MaxInterval: time.Second, Jitter: 0.2}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = p.Delay(i%20 + 1)
	}
}

func BenchmarkNextDelays(b *testing.B) {
	p := backoff.Policy{Delays: []time.Duration{100 * ms, 500 * ms, 2 * time.Second, 5 * time.Second}, MaxAttempts: 10}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_, _ = p.Next(i%8+1, 0)
	}
}
