package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// newBus returns a chanbus with tiny redelivery backoffs, closed at cleanup.
func newBus(t testing.TB) *chanbus.Transport {
	t.Helper()
	tb := chanbus.New(chanbus.WithBackoff(time.Millisecond, 5*time.Millisecond))
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("close chanbus: %v", err)
		}
	})
	return tb
}

func subscribe(t testing.TB, tb transport.Subscriber, topic, group string, conc int, h transport.Handler) {
	t.Helper()
	sub, err := tb.Subscribe(context.Background(), topic, h, transport.SubscribeOptions{Group: group, Concurrency: conc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sub.Close(ctx); err != nil {
			t.Errorf("close subscription: %v", err)
		}
	})
}

// collector subscribes to a topic and keeps what arrives.
type collector struct {
	mu   sync.Mutex
	msgs []*transport.Message
}

func collect(t testing.TB, tb transport.Subscriber, topic string) *collector {
	c := &collector{}
	subscribe(t, tb, topic, "collector", 1, func(_ context.Context, m *transport.Message) error {
		c.mu.Lock()
		c.msgs = append(c.msgs, m.Clone())
		c.mu.Unlock()
		return nil
	})
	return c
}

func (c *collector) got() []*transport.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*transport.Message(nil), c.msgs...)
}

// recommended builds the recommended chain around h, with tiny backoffs.
func recommended(pub transport.Publisher, store middleware.Store, sem *middleware.Semaphore, maxAttempts int) middleware.Middleware {
	var idem middleware.Middleware // nil: left out of the chain
	if store != nil {
		idem = middleware.Idempotent(store, middleware.IdempotentOptions{})
	}
	return middleware.Chain(
		middleware.Tracing(middleware.TracingOptions{}),
		middleware.Metrics(middleware.MetricsOptions{}),
		middleware.DeadLetter(pub, middleware.DeadLetterOptions{}),
		idem,
		middleware.Retry(tinyRetry(maxAttempts)),
		middleware.Timeout(10*time.Second),
		middleware.Limit(sem),
		middleware.Recover(),
	)
}

func publish(t testing.TB, p transport.Publisher, topic string, msgs ...*transport.Message) {
	t.Helper()
	if err := p.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

func waitIdle(t testing.TB, tb *chanbus.Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tb.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestChanbusPanicRetriedThenDeadLettered(t *testing.T) {
	tb := newBus(t)
	dlq := collect(t, tb, "orders.dlq")
	var calls atomic.Int32
	h := recommended(tb, middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.NewSemaphore(4), 3)(
		func(context.Context, *transport.Message) error {
			calls.Add(1)
			panic("inventory service exploded")
		})
	subscribe(t, tb, "orders", "billing", 1, h)
	publish(t, tb, "orders", &transport.Message{ID: "o-1", Key: "42", Body: []byte("x"), Header: map[string]string{"a": "b"}})
	waitFor(t, func() bool { return len(dlq.got()) == 1 })
	waitIdle(t, tb)

	d := dlq.got()[0]
	if calls.Load() != 3 {
		t.Errorf("handler called %d times, want 3 (retried)", calls.Load())
	}
	if d.Header[transport.HeaderID] != "o-1" || d.ID != middleware.DeadLetterID("o-1", "orders", "billing") || d.Key != "42" || string(d.Body) != "x" || d.Header["a"] != "b" {
		t.Errorf("dead letter changed the message: %+v", d)
	}
	for k, want := range map[string]string{
		middleware.HeaderDLQAttempts: "3",
		middleware.HeaderDLQGroup:    "billing",
		middleware.HeaderDLQTopic:    "orders",
		middleware.HeaderDLQDelivery: "1",
	} {
		if d.Header[k] != want {
			t.Errorf("%s = %q, want %q", k, d.Header[k], want)
		}
	}
	if e := d.Header[middleware.HeaderDLQError]; !strings.Contains(e, "inventory service exploded") {
		t.Errorf("error header %q lacks the panic reason", e)
	}
	if _, err := time.Parse(time.RFC3339Nano, d.Header[middleware.HeaderDLQTime]); err != nil {
		t.Errorf("time header: %v", err)
	}
}

func TestChanbusDeadLetterPublishFailureRedelivers(t *testing.T) {
	tb := newBus(t)
	dlq := collect(t, tb, "orders.dlq")
	var dlqTries atomic.Int32
	// The dead-letter publisher fails twice, then works.
	flaky := middleware.PublisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
		if dlqTries.Add(1) <= 2 {
			return fmt.Errorf("dlq broker down: %w", transport.ErrUnavailable)
		}
		return tb.Publish(ctx, topic, msgs...)
	})
	var mu sync.Mutex
	var deliveries []int
	h := recommended(flaky, nil, nil, 2)(func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		deliveries = append(deliveries, m.Attempt)
		mu.Unlock()
		return errBoom
	})
	subscribe(t, tb, "orders", "billing", 1, middleware.Chain()(h))
	publish(t, tb, "orders", &transport.Message{ID: "o-2", Key: "42", Body: []byte("x")})
	waitFor(t, func() bool { return len(dlq.got()) == 1 })
	waitIdle(t, tb)

	mu.Lock()
	defer mu.Unlock()
	// Three deliveries (two not acked because the DLQ publish failed), two
	// attempts each.
	if want := []int{1, 1, 2, 2, 3, 3}; fmt.Sprint(deliveries) != fmt.Sprint(want) {
		t.Errorf("handler saw deliveries %v, want %v", deliveries, want)
	}
	got := dlq.got()
	if len(got) != 1 || got[0].Header[middleware.HeaderDLQID] != "o-2" || got[0].Header[middleware.HeaderDLQDelivery] != "3" {
		t.Errorf("dead letters: %+v", got)
	}
}

func TestChanbusPermanentDeadLetteredAtOnce(t *testing.T) {
	tb := newBus(t)
	dlq := collect(t, tb, "orders.dlq")
	var calls atomic.Int32
	h := recommended(tb, nil, nil, 5)(func(context.Context, *transport.Message) error {
		calls.Add(1)
		return transport.Permanent(errors.New("body does not decode"))
	})
	subscribe(t, tb, "orders", "billing", 1, h)
	publish(t, tb, "orders", &transport.Message{ID: "o-3", Body: []byte("{")})
	waitFor(t, func() bool { return len(dlq.got()) == 1 })
	waitIdle(t, tb)
	d := dlq.got()[0]
	if calls.Load() != 1 || d.Header[middleware.HeaderDLQAttempts] != "1" || d.Header[middleware.HeaderDLQPermanent] != "true" ||
		!strings.Contains(d.Header[middleware.HeaderDLQError], "body does not decode") {
		t.Errorf("calls %d, headers %v", calls.Load(), d.Header)
	}
}

func TestChanbusLimitAcrossSubscriptions(t *testing.T) {
	tb := newBus(t)
	const limit, perTopic = 2, 40
	sem := middleware.NewSemaphore(limit)
	var running, peak, handled atomic.Int32
	h := func(context.Context, *transport.Message) error {
		n := running.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(200 * time.Microsecond) // hold the slot long enough to overlap
		running.Add(-1)
		handled.Add(1)
		return nil
	}
	for i := 0; i < 3; i++ {
		subscribe(t, tb, fmt.Sprintf("t%d", i), "g", 4, recommended(tb, nil, sem, 3)(h))
	}
	for i := 0; i < 3; i++ {
		msgs := make([]*transport.Message, perTopic)
		for j := range msgs {
			msgs[j] = &transport.Message{ID: fmt.Sprint(j), Key: fmt.Sprint(j)}
		}
		publish(t, tb, fmt.Sprintf("t%d", i), msgs...)
	}
	waitFor(t, func() bool { return handled.Load() == 3*perTopic })
	if p := peak.Load(); p > limit || p < 1 {
		t.Fatalf("peak concurrency %d, limit %d", p, limit)
	}
	t.Logf("peak %d of limit %d across 3 subscriptions x 4 workers", peak.Load(), limit)
	if sem.InUse() != 0 {
		t.Fatalf("%d slots still held", sem.InUse())
	}
}

// loseFirstAck simulates a crash between handling and acknowledging: the
// first delivery of each message fails after the handler succeeded, so the
// transport redelivers it.
func loseFirstAck(redelivered *atomic.Int32) middleware.Middleware {
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			err := next(ctx, m)
			if err == nil && m.Attempt == 1 {
				return errors.New("ack lost")
			}
			if m.Attempt > 1 {
				redelivered.Add(1)
			}
			return err
		}
	}
}

func TestChanbusIdempotentSkipsRedelivery(t *testing.T) {
	for name, mk := range storeCases(t) {
		t.Run(name, func(t *testing.T) {
			tb := newBus(t)
			store := mk(t)
			var redelivered atomic.Int32
			var mu sync.Mutex
			handled := map[string]int{}
			h := func(_ context.Context, m *transport.Message) error {
				mu.Lock()
				handled[m.Group+"/"+m.ID]++
				mu.Unlock()
				return nil
			}
			for _, g := range []string{"billing", "shipping"} {
				subscribe(t, tb, "orders", g, 2, middleware.Chain(loseFirstAck(&redelivered),
					middleware.Idempotent(store, middleware.IdempotentOptions{}), middleware.Retry(tinyRetry(3)))(h))
			}
			publish(t, tb, "orders", &transport.Message{ID: "o-1", Key: "1"}, &transport.Message{ID: "o-2", Key: "2"})
			waitFor(t, func() bool { return redelivered.Load() == 4 }) // 2 messages x 2 groups
			// A re-published duplicate (an outbox relay retrying) is skipped too.
			publish(t, tb, "orders", &transport.Message{ID: "o-1", Key: "1"})
			waitIdle(t, tb)
			mu.Lock()
			defer mu.Unlock()
			want := map[string]int{"billing/o-1": 1, "billing/o-2": 1, "shipping/o-1": 1, "shipping/o-2": 1}
			if fmt.Sprint(handled) != fmt.Sprint(want) {
				t.Fatalf("handled %v, want each ID once per group %v", handled, want)
			}
		})
	}
}
