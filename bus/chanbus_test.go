package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

type Step struct {
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

// Per-key order holds through the typed API while keys run in parallel.
func TestKeyOrderOnChanbus(t *testing.T) {
	ctx := t.Context()
	ct := chanbus.New()
	b := bus.New(ct)
	var mu sync.Mutex
	got := map[string][]int{}
	running, maxRunning := 0, 0
	_, err := bus.Subscribe(b, "g", func(ctx context.Context, e bus.Event[Step]) error {
		mu.Lock()
		running++
		maxRunning = max(maxRunning, running)
		got[e.Key] = append(got[e.Key], e.Data.Seq)
		mu.Unlock()
		time.Sleep(50 * time.Microsecond) // let keys overlap
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	}, bus.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	started(t, b)
	const keys, per = 8, 50
	var wg sync.WaitGroup
	for k := range keys {
		wg.Go(func() {
			key := fmt.Sprint("k", k)
			for i := range per {
				if err := bus.Publish(ctx, b, Step{Key: key, Seq: i}, bus.WithKey(key)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := ct.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for k := range keys {
		key := fmt.Sprint("k", k)
		if s := got[key]; len(s) != per || !slices.IsSorted(s) {
			t.Errorf("key %s: handled %v", key, s)
		}
	}
	if maxRunning > 4 {
		t.Errorf("%d handlers ran at once, more than WithConcurrency(4)", maxRunning)
	}
	if s := b.Stats(); s.Published != keys*per || s.Handled != keys*per {
		t.Errorf("Stats = %+v", s)
	}
}

// closeSignal wraps a transport so the test sees when the bus starts
// closing a subscription and when it closes the transport.
type closeSignal struct {
	transport.Transport
	mu     sync.Mutex
	events []string
	onSub  chan struct{}
}

func (c *closeSignal) log(s string) { c.mu.Lock(); c.events = append(c.events, s); c.mu.Unlock() }

func (c *closeSignal) Subscribe(ctx context.Context, topic string, h transport.Handler, o transport.SubscribeOptions) (transport.Subscription, error) {
	s, err := c.Transport.Subscribe(ctx, topic, h, o)
	if err != nil {
		return nil, err
	}
	return subFunc(func(ctx context.Context) error {
		c.log("close subscription: begin")
		close(c.onSub)
		err := s.Close(ctx)
		c.log("close subscription: end")
		return err
	}), nil
}

func (c *closeSignal) Close() error { c.log("close transport"); return c.Transport.Close() }

type subFunc func(ctx context.Context) error

func (f subFunc) Close(ctx context.Context) error { return f(ctx) }

// Shutdown drains: a handler running when Shutdown starts finishes, may
// still publish, and the transport closes only after it.
func TestShutdownDrainsBeforeClosingTransport(t *testing.T) {
	ctx := t.Context()
	cs := &closeSignal{Transport: chanbus.New(), onSub: make(chan struct{})}
	b := bus.New(cs)
	inHandler := make(chan struct{})
	_, err := bus.Subscribe(b, "shipping", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		close(inHandler)
		<-cs.onSub // Shutdown has begun
		err := bus.Publish(ctx, b, OrderShipped{ID: e.Data.ID})
		cs.log(fmt.Sprintf("handler: published follow-up: %v", err))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, b, OrderCreated{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	<-inHandler
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"close subscription: begin", "handler: published follow-up: <nil>", "close subscription: end", "close transport"}
	if !slices.Equal(cs.events, want) {
		t.Errorf("events %q\nwant %q", cs.events, want)
	}
	if s := b.Stats(); s.Handled != 1 || s.Published != 2 {
		t.Errorf("Stats = %+v", s)
	}
	if err := bus.Publish(ctx, b, OrderCreated{ID: "2"}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish after Shutdown: %v", err)
	}
}

// failingSubscribe fails the Subscribe calls for one group.
type failingSubscribe struct {
	transport.Transport
	group string
}

func (f failingSubscribe) Subscribe(ctx context.Context, topic string, h transport.Handler, o transport.SubscribeOptions) (transport.Subscription, error) {
	if o.Group == f.group {
		return nil, fmt.Errorf("%w: broker says no", transport.ErrUnavailable)
	}
	return f.Transport.Subscribe(ctx, topic, h, o)
}

func TestStartFailureRollsBack(t *testing.T) {
	ctx := t.Context()
	ct := chanbus.New()
	b := bus.New(failingSubscribe{ct, "b-group"})
	noop := func(ctx context.Context, e bus.Event[OrderCreated]) error { return nil }
	for _, g := range []string{"a-group", "b-group"} {
		if _, err := bus.Subscribe(b, g, noop); err != nil {
			t.Fatal(err)
		}
	}
	err := b.Start(ctx)
	if !errors.Is(err, transport.ErrUnavailable) || !strings.Contains(err.Error(), `"b-group"`) {
		t.Fatalf("Start: %v", err)
	}
	// a-group was closed again; the bus is not started: a further handler may join.
	if err := bus.Register[OrderShipped](b, "OrderCreated"); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Subscribe(b, "a-group", func(ctx context.Context, e bus.Event[OrderShipped]) error { return nil }); err != nil {
		t.Errorf("Subscribe after failed Start: %v", err)
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestSubscribeAfterStartFailureIsNotRegistered(t *testing.T) {
	b := bus.New(failingSubscribe{chanbus.New(), "bad"})
	started(t, b)
	noop := func(ctx context.Context, e bus.Event[OrderCreated]) error { return nil }
	if _, err := bus.Subscribe(b, "bad", noop); !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("Subscribe: %v", err)
	}
	// Not half-registered: the next attempt fails the same way, not with ErrAlreadyStarted.
	if _, err := bus.Subscribe(b, "bad", noop); !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("Subscribe again: %v", err)
	}
}

// Publish, Subscribe and Shutdown at once: every call returns nil or
// ErrClosed, nothing races (-race), nothing leaks (goleak).
func TestConcurrentShutdown(t *testing.T) {
	for range 20 {
		ctx := t.Context()
		ct := chanbus.New()
		b := bus.New(ct)
		if _, err := bus.Subscribe(b, "g", func(ctx context.Context, e bus.Event[Step]) error { return nil }, bus.WithConcurrency(2)); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for p := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					err := bus.Publish(ctx, b, Step{Key: fmt.Sprint(p), Seq: i}, bus.WithKey(fmt.Sprint(p)))
					if errors.Is(err, transport.ErrClosed) {
						return
					}
					if err != nil {
						t.Errorf("Publish: %v", err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			for i := 0; ; i++ {
				_, err := bus.Subscribe(b, fmt.Sprint("late", i), func(ctx context.Context, e bus.Event[Step]) error { return nil })
				if errors.Is(err, transport.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Subscribe: %v", err)
					return
				}
			}
		})
		if err := b.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
}

func TestPublishBatch(t *testing.T) {
	ctx := t.Context()
	ct := chanbus.New()
	b := bus.New(ct)
	var mu sync.Mutex
	got := map[string][]int{}
	if _, err := bus.Subscribe(b, "g", func(ctx context.Context, e bus.Event[Step]) error {
		mu.Lock()
		defer mu.Unlock()
		if e.Key != e.Data.Key || e.Subject != "batch" {
			t.Errorf("event key %q subject %q, data %+v", e.Key, e.Subject, e.Data)
		}
		got[e.Key] = append(got[e.Key], e.Data.Seq)
		return nil
	}, bus.WithConcurrency(4)); err != nil {
		t.Fatal(err)
	}
	started(t, b)
	var steps []Step
	for i := range 30 {
		steps = append(steps, Step{Key: fmt.Sprint("k", i%3), Seq: i})
	}
	err := bus.PublishBatch(ctx, b, steps, bus.WithKeyFunc(func(s Step) string { return s.Key }), bus.WithSubject("batch"))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.PublishBatch(ctx, b, []Step(nil)); err != nil {
		t.Errorf("empty batch: %v", err)
	}
	if err := ct.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for k, seqs := range got {
		if len(seqs) != 10 || !slices.IsSorted(seqs) {
			t.Errorf("key %s: %v", k, seqs)
		}
	}
	if s := b.Stats(); s.Published != 30 || s.Handled != 30 {
		t.Errorf("Stats = %+v", s)
	}

	for _, tc := range []struct {
		name string
		opt  bus.PublishOption
	}{
		{"WithID", bus.WithID("same")},
		{"WithKeyFunc of another type", bus.WithKeyFunc(func(o OrderCreated) string { return o.ID })},
		{"nil WithKeyFunc", bus.WithKeyFunc[Step](nil)},
	} {
		if err := bus.PublishBatch(ctx, b, steps, tc.opt); !errors.Is(err, bus.ErrInvalidOptions) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// An Event a handler keeps stays as it was delivered, Header included,
// although the transport reuses its messages.
func TestKeptEventsKeepTheirHeaders(t *testing.T) {
	ctx := t.Context()
	b := bus.New(chanbus.New())
	defer b.Shutdown(context.Background())
	const n = 200
	kept := make(chan bus.Event[Step], n)
	if _, err := bus.Subscribe(b, "keeper", func(_ context.Context, e bus.Event[Step]) error {
		kept <- e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := bus.Publish(ctx, b, Step{Seq: i}, bus.WithHeader("seq", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	var events []bus.Event[Step]
	for range n {
		select {
		case e := <-kept:
			events = append(events, e)
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d events handled", len(events), n)
		}
	}
	for _, e := range events {
		if got, want := e.Header["seq"], fmt.Sprint(e.Data.Seq); got != want || e.Header[transport.HeaderID] != e.ID {
			t.Fatalf("kept event %d has header seq %q, ce_id %q (id %q): overwritten by a later delivery",
				e.Data.Seq, got, e.Header[transport.HeaderID], e.ID)
		}
	}
}
