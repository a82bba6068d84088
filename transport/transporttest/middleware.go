package transporttest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// The checks in this file run busway's middleware over the transport under
// test: each promise of the middleware depends on what the broker does
// underneath (deduplication, redelivery, ordering, flow control), so each
// is checked on every transport, not only on chanbus.

// fastRetry retries quickly, for the suite.
func fastRetry(attempts int) middleware.RetryOptions {
	return middleware.RetryOptions{MaxAttempts: attempts, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond, Jitter: middleware.NoJitter}
}

// event returns a message as the bus writes it: ce_id equal to ID.
func event(id, key string, body string) *transport.Message {
	return &transport.Message{ID: id, Key: key, Body: []byte(body), Header: map[string]string{
		transport.HeaderID: id, transport.HeaderType: "transporttest.v1", transport.HeaderSource: "/transporttest",
		transport.HeaderSpecVersion: "1.0",
	}}
}

// testDeadLetter: each failing group's dead letter arrives once, with its
// reason headers, an ID of its own (different per group) and the event's
// ce_id; the original is acknowledged only after its dead letter was
// published (a failed dead-letter publish has it delivered again); and a
// replay of a dead letter (a new Message.ID, the same ce_id) is delivered
// and handled again.
func (s *suite) testDeadLetter(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	dlqTopic := middleware.DLQTopic(topic)
	// Every delivery on the dead-letter topic, kept whole: two groups' dead
	// letters must not share an ID, so a recorder by ID would not do.
	var (
		dlqMu  sync.Mutex
		dlqGot []*transport.Message
	)
	s.subscribe(t, tr, dlqTopic, func(_ context.Context, m *transport.Message) error {
		dlqMu.Lock()
		dlqGot = append(dlqGot, m.Clone())
		dlqMu.Unlock()
		return nil
	}, transport.SubscribeOptions{Group: UniqueGroup(t), StartFrom: transport.StartEarliest})

	const planned = "transporttest: planned failure"
	var healed atomic.Bool // once set, group A's handler succeeds (for the replay)
	groupA, groupB := UniqueGroup(t), UniqueGroup(t)
	handledA, handledB := newRecorder(), newRecorder()
	// Group A's first dead-letter publish fails as if the broker were down:
	// the original must not be acknowledged then, but delivered again.
	var dlqFails atomic.Int32
	flaky := middleware.PublisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
		if dlqFails.Add(1) == 1 {
			return fmt.Errorf("transporttest: dead-letter broker down: %w", transport.ErrUnavailable)
		}
		return tr.Publish(ctx, topic, msgs...)
	})
	var deliveriesA atomic.Int32
	chain := func(pub transport.Publisher, rec *recorder, count *atomic.Int32) transport.Handler {
		return middleware.Chain(
			middleware.DeadLetter(pub, middleware.DeadLetterOptions{}),
			middleware.Retry(fastRetry(2)),
		)(func(_ context.Context, m *transport.Message) error {
			if count != nil && m.Header["bad"] != "" && m.Header["replay"] == "" {
				count.Add(1)
			}
			if m.Header["bad"] != "" && !(healed.Load() && rec == handledA) {
				return errors.New(planned + " of " + m.ID)
			}
			rec.add(m)
			return nil
		})
	}
	s.subscribe(t, tr, topic, chain(flaky, handledA, &deliveriesA), transport.SubscribeOptions{Group: groupA})
	s.subscribe(t, tr, topic, chain(tr, handledB, nil), transport.SubscribeOptions{Group: groupB})

	bad := event(topic+"-bad", "k", "bad")
	bad.Header["bad"] = "1"
	msgs := []*transport.Message{event(topic+"-ok1", "k", "1"), bad, event(topic+"-ok2", "k", "2")}
	s.publish(t, tr, topic, msgs, 1)
	okIDs := []string{msgs[0].ID, msgs[2].ID}
	s.waitFor(t, "group A's good messages", handledA.hasAll(okIDs))
	s.waitFor(t, "group B's good messages", handledB.hasAll(okIDs))
	byGroup := func() map[string][]*transport.Message {
		dlqMu.Lock()
		defer dlqMu.Unlock()
		out := map[string][]*transport.Message{}
		for _, m := range dlqGot {
			out[m.Header[middleware.HeaderDLQGroup]] = append(out[m.Header[middleware.HeaderDLQGroup]], m)
		}
		return out
	}
	s.waitFor(t, "a dead letter from each group", func() (bool, string) {
		g := byGroup()
		return len(g[groupA]) >= 1 && len(g[groupB]) >= 1, fmt.Sprintf("dead letters by group: A %d, B %d", len(g[groupA]), len(g[groupB]))
	})
	// A marker after the dead letters, with their key: a duplicate dead
	// letter published before it would be there by the time it is.
	marker := event(topic+"-dlq-marker", "k", "marker")
	s.publish(t, tr, dlqTopic, []*transport.Message{marker}, 0)
	s.waitFor(t, "the marker on the dead-letter topic", func() (bool, string) {
		dlqMu.Lock()
		defer dlqMu.Unlock()
		for _, m := range dlqGot {
			if m.ID == marker.ID {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d messages on the dead-letter topic, no marker", len(dlqGot))
	})
	g := byGroup()
	delete(g, "") // the marker
	if len(g[groupA]) != 1 || len(g[groupB]) != 1 {
		t.Fatalf("dead letters: %d from group A, %d from group B, want one each", len(g[groupA]), len(g[groupB]))
	}
	if n := deliveriesA.Load(); n < 4 {
		t.Errorf("group A's handler saw the failing message %d times, want 4 (2 attempts, then again after the failed dead-letter publish): it was acknowledged before its dead letter was published", n)
	}
	da, db := g[groupA][0], g[groupB][0]
	for name, d := range map[string]*transport.Message{"A": da, "B": db} {
		if d.ID == bad.ID || d.ID == "" {
			t.Errorf("group %s's dead letter has Message.ID %q; want an ID of its own, not the original's %q", name, d.ID, bad.ID)
		}
		if d.Header[transport.HeaderID] != bad.ID {
			t.Errorf("group %s's dead letter has ce_id %q, want the event's %q", name, d.Header[transport.HeaderID], bad.ID)
		}
		if string(d.Body) != "bad" || d.Key != "k" || d.Header["bad"] != "1" {
			t.Errorf("group %s's dead letter changed the message: key %q body %q headers %v", name, d.Key, d.Body, d.Header)
		}
		if d.Header[middleware.HeaderDLQTopic] != topic || d.Header[middleware.HeaderDLQAttempts] != "2" ||
			!strings.Contains(d.Header[middleware.HeaderDLQError], planned) || d.Header[middleware.HeaderDLQTime] == "" {
			t.Errorf("group %s's dead letter lacks its reason headers: %v", name, d.Header)
		}
	}
	if da.ID == db.ID {
		t.Errorf("both groups' dead letters have Message.ID %q: one would be taken for a re-send of the other", da.ID)
	}
	if handledA.has(bad.ID) || handledB.has(bad.ID) {
		t.Fatal("the failing message was handled")
	}

	// Replay group A's dead letter to the topic, as a replay tool does: a
	// new Message.ID, the event's ce_id, without the dead-letter headers.
	healed.Store(true)
	replay := &transport.Message{ID: da.ID + "-replay", Key: da.Key, Body: da.Body, Header: map[string]string{"replay": "1"}}
	for k, v := range da.Header {
		if !strings.HasPrefix(k, "busway-dlq-") {
			replay.Header[k] = v
		}
	}
	s.publish(t, tr, topic, []*transport.Message{replay}, 0)
	s.waitFor(t, "the replayed dead letter handled by group A", handledA.hasAll([]string{replay.ID}))
	if m, _ := handledA.get(replay.ID); m.Header[transport.HeaderID] != bad.ID {
		t.Errorf("replayed message has ce_id %q, want %q", m.Header[transport.HeaderID], bad.ID)
	}
}

// testIdempotent: a message re-sent with the same ID (and ce_id) to the same
// topic, as an outbox relay does after a crash, is handled once by a group
// with the Idempotent middleware, whether the broker drops the re-send or
// delivers it.
func (s *suite) testIdempotent(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	rec := newRecorder()
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	h := middleware.Idempotent(store, middleware.IdempotentOptions{})(rec.handle)
	s.subscribe(t, tr, topic, h, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 4})
	var msgs []*transport.Message
	for i := range 20 {
		msgs = append(msgs, event(fmt.Sprintf("%s-%d", topic, i), "k"+strconv.Itoa(i%4), strconv.Itoa(i)))
	}
	s.publish(t, tr, topic, msgs, 0)
	s.waitFor(t, "the first sends", rec.hasAll(ids(msgs)))
	// Re-send each, one by one and as a batch, as the outbox would.
	for _, m := range msgs[:10] {
		s.publish(t, tr, topic, []*transport.Message{m.Clone()}, 0)
	}
	resend := make([]*transport.Message, 0, 10)
	for _, m := range msgs[10:] {
		resend = append(resend, m.Clone())
	}
	s.publish(t, tr, topic, resend, 0)
	markers := makeMsgs(topic+"-marker", 4, func(i int) string { return "k" + strconv.Itoa(i) })
	s.publish(t, tr, topic, markers, 0)
	s.waitFor(t, "the markers after the re-sends", rec.hasAll(ids(markers)))
	for _, m := range msgs {
		if _, n := rec.get(m.ID); n != 1 {
			t.Errorf("%s handled %d times, want once", m.ID, n)
		}
	}
}

// testRetryInPlace: the Retry middleware retries a failing message in
// place, so its key's later messages wait for it and the key's order holds
// on every transport, Concurrency 4.
func (s *suite) testRetryInPlace(t *testing.T) {
	const keys, perKey = 4, 25
	tr := s.open(t)
	topic := UniqueTopic(t)
	var (
		mu       sync.Mutex
		next     = map[string]int{}
		attempts = map[string]int{}
		errs     []string
	)
	done := newRecorder()
	h := middleware.Retry(fastRetry(4))(func(_ context.Context, m *transport.Message) error {
		seq, _ := strconv.Atoi(m.Header["seq"])
		mu.Lock()
		if seq != next[m.Key] && len(errs) < 5 {
			errs = append(errs, fmt.Sprintf("key %s: message #%d handled while #%d was due", m.Key, seq, next[m.Key]))
		}
		attempts[m.ID]++
		n := attempts[m.ID]
		fail := seq%3 == 0 && n <= 2 // every third message fails twice
		if !fail && seq == next[m.Key] {
			next[m.Key]++
		}
		mu.Unlock()
		if fail {
			return fmt.Errorf("transporttest: planned failure %d of %s", n, m.ID)
		}
		done.add(m)
		return nil
	})
	s.subscribe(t, tr, topic, h, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 4})
	var msgs []*transport.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, &transport.Message{ID: fmt.Sprintf("%s-k%d-%d", topic, k, i), Key: "k" + strconv.Itoa(k),
				Header: map[string]string{"seq": strconv.Itoa(i)}, Body: []byte(strconv.Itoa(i))})
		}
	}
	s.publish(t, tr, topic, msgs, 20)
	s.waitFor(t, "every message", done.hasAll(ids(msgs)))
	mu.Lock()
	defer mu.Unlock()
	for _, e := range errs {
		t.Error(e)
	}
}

// testSameEventTwoTopics: one event (same Message.ID, same ce_id) published
// to two topics is delivered on both: a broker that deduplicates must not
// take the second for a re-send of the first.
func (s *suite) testSameEventTwoTopics(t *testing.T) {
	tr := s.open(t)
	t1, t2 := UniqueTopic(t), UniqueTopic(t)
	r1, r2 := newRecorder(), newRecorder()
	s.subscribe(t, tr, t1, r1.handle, transport.SubscribeOptions{Group: UniqueGroup(t)})
	s.subscribe(t, tr, t2, r2.handle, transport.SubscribeOptions{Group: UniqueGroup(t)})
	var msgs []*transport.Message
	for i := range 10 {
		msgs = append(msgs, event(fmt.Sprintf("%s-both-%d", t1, i), "k", strconv.Itoa(i)))
	}
	s.publish(t, tr, t1, msgs, 0)
	for _, m := range msgs {
		s.publish(t, tr, t2, []*transport.Message{m}, 0)
	}
	s.waitFor(t, "the events on the first topic", r1.hasAll(ids(msgs)))
	s.waitFor(t, "the same events on the second topic", r2.hasAll(ids(msgs)))
}

// testHandlerPublishesToOwnTopic: a handler that publishes follow-ups with
// its own key to the topic it consumes, more than any buffer holds, neither
// deadlocks nor loses anything, and each follow-up comes after its cause.
func (s *suite) testHandlerPublishesToOwnTopic(t *testing.T) {
	const causes = 300 // more than chanbus's default shard buffer (64)
	tr := s.open(t)
	topic := UniqueTopic(t)
	rec := newRecorder()
	var (
		mu    sync.Mutex
		order []string
		errs  []error
	)
	s.subscribe(t, tr, topic, func(ctx context.Context, m *transport.Message) error {
		if _, seen := rec.get(m.ID); seen == 0 && m.Header["follow-up"] == "" {
			f := &transport.Message{ID: m.ID + "-f", Key: m.Key, Header: map[string]string{"follow-up": "1"}, Body: m.Body}
			if err := tr.Publish(ctx, topic, f); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return err
			}
		}
		mu.Lock()
		order = append(order, m.ID)
		mu.Unlock()
		rec.add(m)
		return nil
	}, transport.SubscribeOptions{Group: UniqueGroup(t)})
	msgs := makeMsgs(topic, causes, func(int) string { return "one-key" })
	want := ids(msgs)
	for _, id := range ids(msgs) {
		want = append(want, id+"-f")
	}
	if err := s.tryPublish(tr, topic, msgs, 25); err != nil {
		t.Fatalf("%v: the group stopped (deadlock?); %d of %d handled", err, rec.distinct(), len(want))
	}
	s.waitFor(t, "every cause and follow-up", rec.hasAll(want))
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Fatalf("a handler's Publish failed: %v", errs[0])
	}
	pos := map[string]int{}
	for i, id := range order {
		if _, ok := pos[id]; !ok {
			pos[id] = i
		}
	}
	for _, id := range ids(msgs) {
		if pos[id+"-f"] < pos[id] {
			t.Errorf("follow-up %s-f handled before its cause", id)
			break
		}
	}
}

// testHandlerGoexit: a handler that ends its goroutine with runtime.Goexit
// (t.FailNow in a handler) counts as a failed delivery: its message is
// delivered again, the key's next message is handled, and Close returns.
func (s *suite) testHandlerGoexit(t *testing.T) {
	if r := s.h.Caps.SkipHandlerGoexit; r != "" {
		t.Skip(r)
	}
	tr := s.h.Open(t)
	topic := UniqueTopic(t)
	var exits atomic.Int32
	done := newRecorder()
	sub, err := tr.Subscribe(s.ctx(t), topic, func(_ context.Context, m *transport.Message) error {
		if m.ID == topic+"-exits" && exits.Add(1) == 1 {
			runtime.Goexit()
		}
		done.add(m)
		return nil
	}, transport.SubscribeOptions{Group: UniqueGroup(t)})
	if err != nil {
		_ = tr.Close()
		t.Fatal(err)
	}
	msgs := []*transport.Message{{ID: topic + "-exits", Key: "k", Body: []byte("1")}, {ID: topic + "-after", Key: "k", Body: []byte("2")}}
	waitErr := s.tryPublish(tr, topic, msgs, 0)
	if waitErr == nil {
		waitErr = s.tryWaitFor("the message whose handler called Goexit, delivered again, and the next one", done.hasAll(ids(msgs)))
	}
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		closed <- errors.Join(sub.Close(ctx), tr.Close())
	}()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close after a handler's Goexit: %v", err)
		}
	case <-time.After(2 * s.timeout):
		t.Fatalf("Close hangs after a handler called runtime.Goexit (and: %v)", waitErr)
	}
	if waitErr != nil {
		t.Fatal(waitErr)
	}
	if n := exits.Load(); n < 2 {
		t.Errorf("the message whose handler called Goexit was delivered %d times, want a redelivery", n)
	}
}

// maxMessageBytes is implemented by transports that know their broker's
// size limit (nats.Transport).
type maxMessageBytes interface{ MaxMessageBytes() int }

// largestBody finds, by publishing probes to a topic nobody reads, the
// largest body that a message like m (its headers, an ID of m's length)
// may have on topics with names as long as topic's, between 0 and limit.
func (s *suite) largestBody(t *testing.T, tr transport.Transport, topic string, m *transport.Message, limit int) int {
	t.Helper()
	probeTopic := UniqueTopic(t)
	for len(probeTopic) < len(topic) {
		probeTopic += "x"
	}
	probeTopic = probeTopic[:len(topic)]
	ctx := s.ctx(t)
	lo, hi := 0, limit // lo fits; hi does not (or is the limit)
	body := make([]byte, limit)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	for n := 0; lo < hi-1; n++ {
		mid := (lo + hi) / 2
		p := m.Clone()
		p.ID = fmt.Sprintf("%s%0*d", m.ID[:len(m.ID)-6], 6, n) // same length as m.ID
		p.Body = body[:mid]
		err := tr.Publish(ctx, probeTopic, p)
		switch {
		case err == nil:
			lo = mid
		case errors.Is(err, transport.ErrMessageTooLarge):
			hi = mid
		default:
			t.Fatalf("probing the size limit: %v", err)
		}
	}
	return lo
}

// testDeadLetterNearLimit: issue 8, defect 6. A message a little below the
// broker's size limit, whose handler fails with a long error, is
// dead-lettered (the dead letter stripped to its short headers if need be),
// and one exactly at the limit, whose dead letter can fit nowhere, does not
// block its key: the key's next message is handled either way.
func (s *suite) testDeadLetterNearLimit(t *testing.T) {
	tr := s.open(t)
	mb, ok := tr.(maxMessageBytes)
	if !ok || mb.MaxMessageBytes() <= 0 || mb.MaxMessageBytes() > 16<<20 {
		t.Skip("transport does not report its size limit (MaxMessageBytes)")
	}
	topic := UniqueTopic(t)
	dlq := newRecorder()
	s.subscribe(t, tr, middleware.DLQTopic(topic), dlq.handle, transport.SubscribeOptions{Group: UniqueGroup(t)})
	var dropped sync.Map // IDs OnUnpublishable saw
	done := newRecorder()
	longErr := strings.Repeat("the handler failed with a long explanation; ", 40)
	h := middleware.DeadLetter(tr, middleware.DeadLetterOptions{
		OnUnpublishable: func(_ context.Context, m *transport.Message, err error) error {
			dropped.Store(m.ID, err)
			return nil
		},
	})(func(_ context.Context, m *transport.Message) error {
		if m.Header["fail"] != "" {
			return errors.New(longErr)
		}
		done.add(m)
		return nil
	})
	s.subscribe(t, tr, topic, h, transport.SubscribeOptions{Group: UniqueGroup(t)})
	near := event(topic+"-near-000000", "k", "")
	near.Header["fail"] = "1"
	max := s.largestBody(t, tr, topic, near, mb.MaxMessageBytes())
	atLimit := near.Clone()
	atLimit.ID, atLimit.Header[transport.HeaderID] = topic+"-full-000000", topic+"-full-000000"
	atLimit.Body = make([]byte, max)
	near.Body = make([]byte, max-700) // room for the short dead-letter headers, not for all
	after := event(topic+"-after-00000", "k", "after")
	s.publish(t, tr, topic, []*transport.Message{near, atLimit, after}, 1)
	s.waitFor(t, "the key's next message, after the two that failed", done.hasAll([]string{after.ID}))
	s.waitFor(t, "the dead letter of the message just below the limit", func() (bool, string) {
		for _, id := range dlq.ids() {
			if m, _ := dlq.get(id); m.Header[transport.HeaderID] == near.ID {
				return true, ""
			}
		}
		_, wasDropped := dropped.Load(near.ID)
		return false, fmt.Sprintf("dead letters %d; dropped: %v", dlq.distinct(), wasDropped)
	})
	var gotFull bool
	for _, id := range dlq.ids() {
		if m, _ := dlq.get(id); m.Header[transport.HeaderID] == atLimit.ID {
			gotFull = true
			if m.Header[middleware.HeaderDLQGroup] == "" {
				t.Errorf("dead letter of the message at the limit lacks its group header: %v", m.Header)
			}
		}
	}
	if _, wasDropped := dropped.Load(atLimit.ID); !wasDropped && !gotFull {
		t.Errorf("the message at the limit was neither dead-lettered nor handed to OnUnpublishable")
	}
	t.Logf("size limit %d, largest body %d; message at the limit: dead-lettered %v", mb.MaxMessageBytes(), max, gotFull)
}

// testLimitSharedByPublishingHandlers: one Semaphore (middleware.Limit)
// caps the handlers of two groups, and the one that holds the slot
// publishes, with one key, more follow-ups to the other's topic than any
// buffer holds: nothing deadlocks (on chanbus its Publish must not wait for
// room that only the other handler, which waits for the slot, can make),
// and every follow-up is handled.
func (s *suite) testLimitSharedByPublishingHandlers(t *testing.T) {
	const followUps = 300 // more than chanbus's default key buffer (64)
	tr := s.open(t)
	causes, effects := UniqueTopic(t), UniqueTopic(t)
	sem := middleware.NewSemaphore(1)
	rec := newRecorder()
	s.subscribe(t, tr, effects, middleware.Limit(sem)(func(_ context.Context, m *transport.Message) error {
		rec.add(m)
		return nil
	}), transport.SubscribeOptions{Group: UniqueGroup(t)})
	msgs := makeMsgs(effects, followUps, func(int) string { return "k" })
	s.subscribe(t, tr, causes, middleware.Limit(sem)(func(ctx context.Context, _ *transport.Message) error {
		for _, m := range msgs {
			if err := tr.Publish(ctx, effects, m); err != nil {
				return err
			}
		}
		return nil
	}), transport.SubscribeOptions{Group: UniqueGroup(t)})
	s.publish(t, tr, causes, []*transport.Message{{ID: causes + "-cause", Body: []byte("cause")}}, 1)
	s.waitFor(t, "every follow-up, handled under the shared semaphore", rec.hasAll(ids(msgs)))
}
