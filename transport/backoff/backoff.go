// Package backoff is busway's one retry-delay policy and its one
// context-aware sleep. Every place that waits before trying again uses it:
// chanbus's redelivery of a failed message, Kafka's in-place retry and its
// produce retry, NATS's Nak delays and middleware.Retry. Each of those
// documents its own defaults (in the words of Policy's fields) and fills
// them in before it uses a Policy; this package's defaults apply only to
// fields left zero.
//
// It imports nothing of busway's, so transports and middleware can both
// import it without breaking the layering.
//
// # Vocabulary
//
// A delivery fails, and the policy says how long to wait before the next
// attempt. "failures" counts the attempts made so far that failed: 1 after
// the first. The delay after failure n is
//
//	min(InitialInterval × Multiplier^(n-1), MaxInterval)
//
// or Delays[n-1] (the last one repeated) when Delays is set; then Jitter
// spreads it. MaxAttempts caps the attempts, the first included;
// MaxElapsed caps the time from the first failure to the end of the last
// delay.
//
// # Allocations
//
// Delay and Next allocate nothing and take no lock (the jitter comes from
// math/rand/v2's per-thread generator), so a policy may sit on a hot path.
// Sleep allocates the one timer it waits on, only when it does wait.
package backoff

import (
	"context"
	"math"
	"math/rand/v2"
	"time"
)

// Defaults of the fields of Policy left zero.
const (
	DefaultInitialInterval = 100 * time.Millisecond
	DefaultMaxInterval     = 10 * time.Second
	DefaultMultiplier      = 2.0
)

// Policy says how long to wait after a failure, and when to stop. The zero
// value is exponential from 100ms, doubling, at most 10s, without jitter
// and without a cap on attempts or time. A Policy is a value: copy it
// freely; its methods are safe for concurrent use.
type Policy struct {
	// InitialInterval is the delay after the first failure. Default
	// DefaultInitialInterval (100ms); values of 0 or less mean the default.
	InitialInterval time.Duration
	// MaxInterval caps one delay (before jitter). Default
	// DefaultMaxInterval (10s); 0 or less means the default, a value below
	// InitialInterval means InitialInterval.
	MaxInterval time.Duration
	// Multiplier grows the delay after each further failure. Default
	// DefaultMultiplier (2); values below 1 (and NaN) mean the default.
	Multiplier float64
	// Jitter spreads each delay d uniformly into [d×(1-Jitter),
	// d×(1+Jitter)], so that consumers failing together do not retry in
	// lockstep. Default 0: none; values above 1 mean 1.
	Jitter float64
	// Delays, when set, are the delays after the 1st, 2nd, ... failure, the
	// last one repeated for every later failure, instead of the exponential
	// of InitialInterval, MaxInterval and Multiplier. Jitter still applies.
	Delays []time.Duration
	// MaxAttempts caps the attempts, the first included: after MaxAttempts
	// failures Next says stop. Default 0: no cap (negative values too).
	MaxAttempts int
	// MaxElapsed caps the time spent retrying: Next says stop rather than
	// start a delay that would end later than MaxElapsed after the first
	// failure. Default 0: no cap.
	MaxElapsed time.Duration
}

// Delay returns the delay after the failures-th failure (values below 1
// mean 1), jitter applied.
func (p Policy) Delay(failures int) time.Duration {
	failures = max(failures, 1)
	var d time.Duration
	if n := len(p.Delays); n > 0 {
		d = p.Delays[min(failures, n)-1]
	} else {
		d = p.exponential(failures)
	}
	if j := min(p.Jitter, 1); j > 0 && d > 0 {
		d = time.Duration(float64(d) * (1 + j*(2*rand.Float64()-1)))
	}
	return d
}

func (p Policy) exponential(failures int) time.Duration {
	first, most, mult := p.InitialInterval, p.MaxInterval, p.Multiplier
	if first <= 0 {
		first = DefaultInitialInterval
	}
	if most <= 0 {
		most = DefaultMaxInterval
	}
	most = max(most, first)
	if !(mult >= 1) {
		mult = DefaultMultiplier
	}
	if failures == 1 || mult == 1 {
		return min(first, most)
	}
	// Closed form, so that a long run of failures costs no loop; a product
	// too large for float64 is +Inf, which the comparison caps too.
	f := float64(first) * math.Pow(mult, float64(failures-1))
	if !(f < float64(most)) {
		return most
	}
	return time.Duration(f)
}

// Next returns the delay before the attempt after the failures-th failure,
// and whether to make that attempt at all: false once MaxAttempts attempts
// failed, or when the delay would end more than MaxElapsed after the first
// failure (elapsed is the time since it).
func (p Policy) Next(failures int, elapsed time.Duration) (time.Duration, bool) {
	if !p.Retries(failures) {
		return 0, false
	}
	d := p.Delay(failures)
	if p.MaxElapsed > 0 && elapsed+d > p.MaxElapsed {
		return 0, false
	}
	return d, true
}

// Retries reports whether MaxAttempts allows another attempt after
// failures failed ones. For a place that checks the attempts and the
// elapsed time at different moments; Next checks both.
func (p Policy) Retries(failures int) bool {
	return p.MaxAttempts <= 0 || failures < p.MaxAttempts
}

// Sleep waits for d, or until ctx ends. It returns nil when the whole of d
// passed, else ctx's error as it is. A d of 0 or less does not wait: it
// returns ctx.Err().
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
