package middleware_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// Idempotent inside DeadLetter: a dead-lettered message is not marked
// handled, so replaying it from the dead-letter topic runs the handler.
func TestOrderDeadLetteredMessageCanBeReplayed(t *testing.T) {
	pub := &fakePub{}
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	var broken atomic.Bool
	broken.Store(true)
	var handled atomic.Int32
	h := middleware.Chain(
		middleware.DeadLetter(pub, middleware.DeadLetterOptions{}),
		middleware.Idempotent(store, middleware.IdempotentOptions{}),
		middleware.Retry(tinyRetry(2)),
	)(func(context.Context, *transport.Message) error {
		if broken.Load() {
			return errBoom
		}
		handled.Add(1)
		return nil
	})
	ctx := context.Background()
	if err := h(ctx, msg("m1")); err != nil {
		t.Fatal(err)
	}
	_, dead := pub.got()
	if len(dead) != 1 {
		t.Fatalf("%d dead letters", len(dead))
	}
	// The bug is fixed; an operator replays the dead letter to the topic.
	broken.Store(false)
	replay := dead[0].Clone()
	replay.Topic, replay.Group, replay.Attempt = "orders", "billing", 1
	if err := h(ctx, replay); err != nil {
		t.Fatal(err)
	}
	if handled.Load() != 1 {
		t.Fatal("replayed dead letter was skipped as a duplicate")
	}
	// Now it is marked: a further copy is a duplicate.
	if err := h(ctx, replay); err != nil || handled.Load() != 1 {
		t.Fatalf("err %v handled %d", err, handled.Load())
	}
}

// Limit inside Retry: a failing handler does not hold its slot while Retry
// sleeps, so another message gets the only slot meanwhile.
func TestOrderLimitSlotFreeDuringBackoff(t *testing.T) {
	sem := middleware.NewSemaphore(1)
	failed := make(chan struct{})
	var once atomic.Bool
	slow := middleware.Chain(
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 2, InitialInterval: time.Hour, Jitter: middleware.NoJitter}),
		middleware.Limit(sem),
	)(func(context.Context, *transport.Message) error {
		if once.CompareAndSwap(false, true) {
			close(failed)
		}
		return errBoom
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- slow(ctx, msg("m1")) }()
	<-failed // the first attempt failed; Retry now sleeps (an hour)

	other := middleware.Limit(sem)(ok)
	octx, ocancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ocancel()
	if err := other(octx, msg("m2")); err != nil {
		t.Fatalf("the slot was held during backoff: %v", err)
	}
	cancel() // ends the backoff at once
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}
