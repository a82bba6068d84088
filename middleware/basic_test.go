package middleware_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

func TestChainOrder(t *testing.T) {
	var trace []string
	mk := func(name string) middleware.Middleware {
		return func(next transport.Handler) transport.Handler {
			return func(ctx context.Context, m *transport.Message) error {
				trace = append(trace, name+">")
				err := next(ctx, m)
				trace = append(trace, "<"+name)
				return err
			}
		}
	}
	h := middleware.Chain(mk("a"), nil, mk("b"), mk("c"))(func(context.Context, *transport.Message) error {
		trace = append(trace, "h")
		return nil
	})
	if err := h(context.Background(), msg("1")); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(trace, " "), "a> b> c> h <c <b <a"; got != want {
		t.Fatalf("order = %q, want %q", got, want)
	}
	if err := middleware.Chain()(ok)(context.Background(), msg("1")); err != nil {
		t.Fatal(err)
	}
}

func TestChainPublisher(t *testing.T) {
	var order []string
	mk := func(name string) middleware.PublisherMiddleware {
		return func(next transport.Publisher) transport.Publisher {
			return middleware.PublisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
				order = append(order, name)
				return next.Publish(ctx, topic, msgs...)
			})
		}
	}
	pub := &fakePub{}
	p := middleware.ChainPublisher(mk("a"), nil, mk("b"))(pub)
	if err := p.Publish(context.Background(), "t", msg("1")); err != nil {
		t.Fatal(err)
	}
	if strings.Join(order, "") != "ab" {
		t.Fatalf("order %v", order)
	}
	if topics, _ := pub.got(); len(topics) != 1 {
		t.Fatalf("published %v", topics)
	}
}

func TestRecover(t *testing.T) {
	h := middleware.Recover()(func(context.Context, *transport.Message) error { panic("kaput") })
	err := h(context.Background(), msg("1"))
	var pe *middleware.PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want *PanicError", err)
	}
	if pe.Value != "kaput" || !strings.Contains(err.Error(), "kaput") {
		t.Fatalf("value %v, text %q", pe.Value, err)
	}
	if !strings.Contains(string(pe.Stack), "recover_test") && !strings.Contains(string(pe.Stack), "basic_test") {
		t.Fatalf("stack does not show the panicking function:\n%s", pe.Stack)
	}

	// panic(err) unwraps to err.
	h = middleware.Recover()(func(context.Context, *transport.Message) error { panic(errBoom) })
	if err := h(context.Background(), msg("1")); !errors.Is(err, errBoom) {
		t.Fatalf("err = %v, want errBoom inside", err)
	}
	// No panic: the handler's result passes through.
	if err := middleware.Recover()(failing(errBoom))(context.Background(), msg("1")); err != errBoom {
		t.Fatalf("err = %v", err)
	}
	if err := middleware.Recover()(ok)(context.Background(), msg("1")); err != nil {
		t.Fatal(err)
	}
}

func tinyRetry(max int) middleware.RetryOptions {
	return middleware.RetryOptions{MaxAttempts: max, InitialInterval: time.Microsecond, MaxInterval: 10 * time.Microsecond}
}

func TestRetry(t *testing.T) {
	t.Run("succeeds after failures", func(t *testing.T) {
		var calls int
		var seen []int
		h := middleware.Retry(tinyRetry(5))(func(ctx context.Context, m *transport.Message) error {
			calls++
			seen = append(seen, middleware.RetryAttempt(ctx))
			if calls < 3 {
				return errBoom
			}
			return nil
		})
		if err := h(context.Background(), msg("1")); err != nil {
			t.Fatal(err)
		}
		if calls != 3 || seen[0] != 1 || seen[1] != 2 || seen[2] != 3 {
			t.Fatalf("calls %d, attempts seen %v", calls, seen)
		}
	})
	t.Run("gives up after MaxAttempts", func(t *testing.T) {
		var calls atomic.Int32
		h := middleware.Retry(tinyRetry(4))(func(context.Context, *transport.Message) error {
			calls.Add(1)
			return errBoom
		})
		err := h(context.Background(), msg("1"))
		var re *middleware.RetryError
		if !errors.As(err, &re) || re.Attempts != 4 || !errors.Is(err, errBoom) || calls.Load() != 4 {
			t.Fatalf("err %v, calls %d", err, calls.Load())
		}
		if middleware.Attempts(err) != 4 || middleware.Attempts(errBoom) != 1 || middleware.Attempts(nil) != 0 {
			t.Fatal("Attempts")
		}
	})
	t.Run("permanent is not retried", func(t *testing.T) {
		var calls int
		h := middleware.Retry(tinyRetry(5))(func(context.Context, *transport.Message) error {
			calls++
			return transport.Permanent(errBoom)
		})
		err := h(context.Background(), msg("1"))
		if calls != 1 || !transport.IsPermanent(err) || middleware.Attempts(err) != 1 {
			t.Fatalf("calls %d err %v", calls, err)
		}
	})
	t.Run("ShouldRetry false stops", func(t *testing.T) {
		var calls int
		o := tinyRetry(5)
		o.ShouldRetry = func(err error) bool { return !errors.Is(err, errBoom) }
		h := middleware.Retry(o)(func(context.Context, *transport.Message) error {
			calls++
			return errBoom
		})
		if err := h(context.Background(), msg("1")); calls != 1 || !errors.Is(err, errBoom) {
			t.Fatalf("calls %d err %v", calls, err)
		}
	})
	t.Run("stops promptly when ctx ends during backoff", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var calls int
		h := middleware.Retry(middleware.RetryOptions{MaxAttempts: 10, InitialInterval: time.Hour})(
			func(context.Context, *transport.Message) error {
				calls++
				cancel() // ctx ends while Retry is about to sleep an hour
				return errBoom
			})
		start := time.Now()
		err := h(ctx, msg("1"))
		if time.Since(start) > 5*time.Second {
			t.Fatalf("Retry slept %v after ctx ended", time.Since(start))
		}
		if calls != 1 || !errors.Is(err, context.Canceled) || !errors.Is(err, errBoom) {
			t.Fatalf("calls %d err %v", calls, err)
		}
	})
	t.Run("MaxElapsed bounds backoff", func(t *testing.T) {
		var calls int
		h := middleware.Retry(middleware.RetryOptions{MaxAttempts: 10, InitialInterval: time.Hour, MaxElapsed: time.Second})(
			func(context.Context, *transport.Message) error { calls++; return errBoom })
		if err := h(context.Background(), msg("1")); calls != 1 || middleware.Attempts(err) != 1 {
			t.Fatalf("calls %d err %v", calls, err)
		}
	})
	t.Run("backoff grows and is capped", func(t *testing.T) {
		var times []time.Time
		h := middleware.Retry(middleware.RetryOptions{MaxAttempts: 4, InitialInterval: 2 * time.Millisecond,
			MaxInterval: 4 * time.Millisecond, Multiplier: 3, Jitter: middleware.NoJitter})(
			func(context.Context, *transport.Message) error { times = append(times, time.Now()); return errBoom })
		_ = h(context.Background(), msg("1"))
		if len(times) != 4 {
			t.Fatalf("%d calls", len(times))
		}
		// Lower bounds only: timers never fire early, but may fire late.
		for i, min := range []time.Duration{2 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond} {
			if d := times[i+1].Sub(times[i]); d < min {
				t.Fatalf("backoff %d = %v, want >= %v", i, d, min)
			}
		}
	})
}

func TestTimeout(t *testing.T) {
	h := middleware.Timeout(time.Millisecond)(func(ctx context.Context, _ *transport.Message) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("no deadline")
		}
		<-ctx.Done()
		return ctx.Err()
	})
	if err := h(context.Background(), msg("1")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	// d <= 0: no deadline.
	h = middleware.Timeout(0)(func(ctx context.Context, _ *transport.Message) error {
		if _, ok := ctx.Deadline(); ok {
			return errors.New("deadline set")
		}
		return nil
	})
	if err := h(context.Background(), msg("1")); err != nil {
		t.Fatal(err)
	}
	// Inside Retry each attempt gets its own deadline.
	var calls int
	h = middleware.Chain(middleware.Retry(tinyRetry(3)), middleware.Timeout(time.Millisecond))(
		func(ctx context.Context, _ *transport.Message) error {
			calls++
			<-ctx.Done()
			return ctx.Err()
		})
	if err := h(context.Background(), msg("1")); calls != 3 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("calls %d err %v", calls, err)
	}
}

func TestLimit(t *testing.T) {
	sem := middleware.NewSemaphore(2)
	if sem.Cap() != 2 || middleware.NewSemaphore(0).Cap() != 1 {
		t.Fatal("Cap")
	}
	release := make(chan struct{})
	var running, peak atomic.Int32
	h := middleware.Limit(sem)(func(ctx context.Context, _ *transport.Message) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return nil
	})
	errs := make(chan error)
	for i := 0; i < 5; i++ {
		go func() { errs <- h(context.Background(), msg("1")) }()
	}
	waitFor(t, func() bool { return sem.InUse() == 2 && running.Load() == 2 })

	// A waiter whose ctx ends gives up with ctx.Err() and holds nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h(ctx, msg("1")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	close(release)
	for i := 0; i < 5; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if peak.Load() != 2 || sem.InUse() != 0 {
		t.Fatalf("peak %d, in use %d", peak.Load(), sem.InUse())
	}
	if !sem.TryAcquire() {
		t.Fatal("TryAcquire on a free semaphore")
	}
	sem.Release()
	sem.Release() // extra release: no panic, no extra slot
	if sem.InUse() != 0 {
		t.Fatal("InUse")
	}
	// nil semaphore: no limit.
	if err := middleware.Limit(nil)(ok)(context.Background(), msg("1")); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRetryNoAllocs: a handler that succeeds costs Retry no allocation,
// and the policy it computes its delays with (backoff.Policy) none either.
func TestRetryNoAllocs(t *testing.T) {
	h := middleware.Retry(middleware.RetryOptions{})(func(context.Context, *transport.Message) error { return nil })
	m := msg("1")
	ctx := context.Background()
	if a := testing.AllocsPerRun(1000, func() { _ = h(ctx, m) }); a != 0 {
		t.Errorf("Retry around a succeeding handler: %v allocations per call", a)
	}
}
