package chanbus_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// A follow-up that one group's handler publishes (same key, same topic) never
// reaches another group before the message that caused it: every group sees
// the topic in one order, as on a broker's log.
func TestFollowUpNeverOvertakesItsCauseInAnotherGroup(t *testing.T) {
	for round := range 8 {
		tr := chanbus.New(chanbus.WithBuffer(1), chanbus.WithShards(1))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		topic := "causal"

		// Group a turns "cause" into "effect".
		subA, err := tr.Subscribe(ctx, topic, func(ctx context.Context, m *transport.Message) error {
			if m.ID == "cause" {
				return tr.Publish(ctx, topic, &transport.Message{ID: "effect", Key: "k"})
			}
			return nil
		}, transport.SubscribeOptions{Group: "a"})
		if err != nil {
			t.Fatal(err)
		}
		// Group b is held up by its first message, so its queue fills.
		release, started := make(chan struct{}), make(chan struct{})
		var mu sync.Mutex
		var seenB []string
		doneB := make(chan struct{})
		subB, err := tr.Subscribe(ctx, topic, func(ctx context.Context, m *transport.Message) error {
			if m.ID == "fill" {
				close(started)
				<-release
			}
			mu.Lock()
			seenB = append(seenB, m.ID)
			if len(seenB) == 4 {
				close(doneB)
			}
			mu.Unlock()
			return nil
		}, transport.SubscribeOptions{Group: "b"})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"fill", "queued"} {
			if err := tr.Publish(ctx, topic, &transport.Message{ID: id, Key: "k"}); err != nil {
				t.Fatal(err)
			}
			if id == "fill" {
				<-started
			}
		}
		published := make(chan error, 1)
		go func() { published <- tr.Publish(ctx, topic, &transport.Message{ID: "cause", Key: "k"}) }()
		close(release)
		if err := <-published; err != nil {
			t.Fatal(err)
		}
		select {
		case <-doneB:
		case <-ctx.Done():
			t.Fatalf("round %d: group b saw only %v", round, seenB)
		}
		mu.Lock()
		got := seenB
		mu.Unlock()
		want := []string{"fill", "queued", "cause", "effect"}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("round %d: group b saw %v, want %v", round, got, want)
			}
		}
		subA.Close(ctx)
		subB.Close(ctx)
		tr.Close()
		cancel()
	}
}
