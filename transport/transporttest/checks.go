package transporttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/transport"
)

// testRoundTrip: ID, Key, every header and the body arrive byte for byte.
// testSystem: the transport names its messaging system (transport.Systemer),
// which tracing and metrics report as messaging.system by default.
func (s *suite) testSystem(t *testing.T) {
	tr := s.open(t)
	if sys := transport.SystemOf(tr); sys == "" || strings.ContainsAny(sys, " \t\n") {
		t.Errorf("SystemOf(%T) = %q: a transport implements transport.Systemer with a messaging.system value such as \"nats\"", tr, sys)
	}
}

func (s *suite) testRoundTrip(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t)})

	binary := make([]byte, 256) // every byte value: not valid UTF-8
	for i := range binary {
		binary[i] = byte(255 - i)
	}
	size := 1 << 20
	if m := s.h.Caps.MaxBodyBytes; m > 0 && m < size {
		size = m
	}
	big := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	_, _ = rng.Read(big)
	p := topic
	sent := []*transport.Message{
		{ID: p + "-binary", Key: "key-binary", Body: binary, Header: map[string]string{
			"x-plain":                   "1",
			"X-Mixed-Case":              "Value With Spaces",
			"x-unicode":                 "héllo ✓ 日本",
			"x-empty":                   "",
			transport.HeaderID:          p + "-binary",
			transport.HeaderType:        "com.example.thing.v1",
			transport.HeaderSource:      "/transporttest",
			transport.HeaderSpecVersion: "1.0",
			transport.HeaderContentType: "application/octet-stream",
		}},
		{ID: p + "-nil-body", Body: nil},
		{ID: p + "-empty-body", Key: "key-empty", Body: []byte{}, Header: map[string]string{"x-only": "one"}},
		{ID: p + "-utf8", Key: "ключ", Body: []byte(`{"json":"körper"}`), Header: map[string]string{transport.HeaderContentType: "application/json"}},
		{ID: p + "-large", Key: "key-big", Body: big, Header: map[string]string{"x-size": strconv.Itoa(size)}},
	}
	want := make([]*transport.Message, len(sent))
	for i, m := range sent {
		want[i] = m.Clone()
	}
	for _, m := range sent {
		s.publish(t, tr, topic, []*transport.Message{m}, 1)
	}
	for i, m := range sent {
		if !equalSent(m, want[i]) {
			t.Errorf("Publish modified the caller's message %q", want[i].ID)
		}
	}
	s.waitFor(t, "every round-trip message", rec.hasAll(ids(want)))
	for _, w := range want {
		got, _ := rec.get(w.ID)
		if got.ID != w.ID {
			t.Errorf("%s: ID %q, want %q", w.ID, got.ID, w.ID)
		}
		if got.Key != w.Key {
			t.Errorf("%s: Key %q, want %q", w.ID, got.Key, w.Key)
		}
		if !bytes.Equal(got.Body, w.Body) {
			t.Errorf("%s: body of %d bytes differs from the %d bytes sent (first difference at %d)", w.ID, len(got.Body), len(w.Body), firstDiff(got.Body, w.Body))
		}
		hdr := maps.Clone(got.Header)
		if _, sentPK := w.Header[transport.HeaderPartitionKey]; !sentPK && w.Key != "" && hdr[transport.HeaderPartitionKey] == w.Key {
			delete(hdr, transport.HeaderPartitionKey) // a transport may carry Key in this header
		}
		if !maps.Equal(hdr, w.Header) {
			t.Errorf("%s: headers\n got  %q\n want %q", w.ID, got.Header, w.Header)
		}
	}
}

// testValuesExactOrRefused: a header value, ID or Key that some broker
// cannot carry as it is (a line break, white space at an end: NATS headers
// are lines and nats.go trims them) is delivered exactly as sent or refused
// by Publish with ErrInvalidMessage, never delivered changed.
func (s *suite) testValuesExactOrRefused(t *testing.T) {
	p := UniqueTopic(t)
	s.exactOrRefused(t, p, []*transport.Message{
		{ID: p + "-crlf", Header: map[string]string{"x-v": "a\r\nInjected: yes"}},
		{ID: p + "-lf", Header: map[string]string{"x-v": "a\nb"}},
		{ID: p + "-padded", Header: map[string]string{"x-v": "  padded\t "}},
		{ID: p + "-key", Key: " key "},
		{ID: p + "-key-lf", Key: "k\nk"},
		{ID: p + "-id-padded "},
		{ID: p + "-id\r\nInjected: id"},
	})
}

// testHeaderNamesExactOrRefused: a header whose name a transport or
// broker uses itself (NATS's Nats-Msg-Id and the Nats-* headers its server
// obeys, its "ce-" spelling of the CloudEvents attributes, the header in
// which a transport carries the ID or the Key) is delivered exactly as
// sent or refused by Publish with ErrInvalidMessage: never lost, renamed,
// obeyed, or taken for the message's ID or Key.
func (s *suite) testHeaderNamesExactOrRefused(t *testing.T) {
	p := UniqueTopic(t)
	s.exactOrRefused(t, p, []*transport.Message{
		{ID: p + "-ce-dash", Header: map[string]string{"ce-x": "1"}},
		{ID: p + "-ce-both", Header: map[string]string{"ce-id": "2", "ce_id": "1"}},
		{ID: p + "-ce-id", Header: map[string]string{"ce_id": "another"}},
		{ID: p + "-nats-msg-id", Header: map[string]string{"Nats-Msg-Id": "another"}},
		{ID: p + "-nats-expected", Header: map[string]string{"Nats-Expected-Stream": "another"}},
		{ID: p + "-nats-rollup", Header: map[string]string{"Nats-Rollup": "sub"}},
		{ID: p + "-busway-id", Header: map[string]string{"busway-id": "another"}},
		{ID: p + "-pk-other", Key: "k1", Header: map[string]string{transport.HeaderPartitionKey: "k2"}},
		{ID: p + "-pk-no-key", Header: map[string]string{transport.HeaderPartitionKey: "k2"}},
	})
}

// exactOrRefused publishes each of msgs (with its ID as its body) to topic
// alone and checks that Publish either refused it with ErrInvalidMessage,
// and it was not delivered, or accepted it, and it was delivered with the
// ID, Key, headers and body it was sent with.
func (s *suite) exactOrRefused(t *testing.T, topic string, msgs []*transport.Message) {
	tr := s.open(t)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t)})
	var delivered []*transport.Message
	for _, m := range msgs {
		m.Body = []byte(m.ID)
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		err := tr.Publish(ctx, topic, m)
		cancel()
		switch {
		case err == nil:
			delivered = append(delivered, m)
		case !errors.Is(err, transport.ErrInvalidMessage):
			t.Errorf("Publish(%q): %v, want nil (delivered exactly) or ErrInvalidMessage", m.ID, err)
		default:
			t.Logf("refused %q: %v", m.ID, err)
		}
	}
	// A last message that every transport takes: once it is here, so are
	// all the messages accepted before it.
	last := &transport.Message{ID: topic + "-last", Key: "k", Body: []byte("last")}
	s.publish(t, tr, topic, []*transport.Message{last}, 1)
	s.waitFor(t, "the accepted messages", rec.hasAll(ids(append(delivered, last))))
	for _, w := range delivered {
		got, _ := rec.get(w.ID)
		if got == nil {
			continue
		}
		hdr := maps.Clone(got.Header)
		if _, sentPK := w.Header[transport.HeaderPartitionKey]; !sentPK && w.Key != "" && hdr[transport.HeaderPartitionKey] == w.Key {
			delete(hdr, transport.HeaderPartitionKey) // a transport may carry Key in this header
		}
		if got.ID != w.ID || got.Key != w.Key || !bytes.Equal(got.Body, w.Body) || !maps.Equal(hdr, w.Header) {
			t.Errorf("sent ID %q, Key %q, headers %q; delivered ID %q, Key %q, headers %q", w.ID, w.Key, w.Header, got.ID, got.Key, got.Header)
		}
	}
	for _, m := range msgs {
		if got, _ := rec.get(m.ID); got != nil && !slices.Contains(delivered, m) {
			t.Errorf("%q was refused by Publish, and delivered", m.ID)
		}
	}
}

func equalSent(a, b *transport.Message) bool {
	return a.ID == b.ID && a.Key == b.Key && bytes.Equal(a.Body, b.Body) && maps.Equal(a.Header, b.Header)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// testDeliveryFields: Topic, Group, Time and Attempt are set on delivery.
func (s *suite) testDeliveryFields(t *testing.T) {
	tr := s.open(t)
	topic, group := UniqueTopic(t), UniqueGroup(t)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: group})
	msgs := makeMsgs(topic, 3, func(i int) string { return "k" + strconv.Itoa(i%2) })
	before := time.Now()
	s.publish(t, tr, topic, msgs, 0)
	s.waitFor(t, "3 messages", rec.hasAll(ids(msgs)))
	after := time.Now()
	const skew = 5 * time.Minute // broker clocks may differ a little
	for _, id := range ids(msgs) {
		got, _ := rec.get(id)
		if got.Topic != topic {
			t.Errorf("%s: Topic %q, want %q", id, got.Topic, topic)
		}
		if got.Group != group {
			t.Errorf("%s: Group %q, want %q", id, got.Group, group)
		}
		if got.Time.IsZero() || got.Time.Before(before.Add(-skew)) || got.Time.After(after.Add(skew)) {
			t.Errorf("%s: Time %v, want about %v", id, got.Time, before)
		}
		if s.h.Caps.CountsAttempts && got.Attempt != 1 || got.Attempt < 1 {
			t.Errorf("%s: Attempt %d on first delivery, want 1", id, got.Attempt)
		}
	}
}

// testTopicsIsolated: 20 topics in parallel each get exactly their messages.
func (s *suite) testTopicsIsolated(t *testing.T) {
	const topics, perTopic = 20, 25
	tr := s.open(t)
	names := make([]string, topics)
	recs := make([]*recorder, topics)
	msgs := make([][]*transport.Message, topics)
	for i := range names {
		names[i] = UniqueTopic(t)
		recs[i] = newRecorder()
		msgs[i] = makeMsgs(names[i], perTopic, func(j int) string { return "k" + strconv.Itoa(j%3) })
	}
	var wg sync.WaitGroup
	for i := range topics {
		wg.Go(func() {
			if _, err := s.trySubscribe(t, tr, names[i], recs[i].handle, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 2}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range topics {
		wg.Go(func() {
			if err := s.tryPublish(tr, names[i], msgs[i], 0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range topics {
		wg.Go(func() {
			if err := s.tryWaitFor("messages of "+names[i], recs[i].hasAll(ids(msgs[i]))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i, r := range recs {
		want := make(map[string]bool, perTopic)
		for _, id := range ids(msgs[i]) {
			want[id] = true
		}
		for _, id := range r.ids() {
			m, _ := r.get(id)
			if !want[id] || m.Topic != names[i] {
				t.Errorf("topic %s got message %q of topic %q", names[i], id, m.Topic)
			}
		}
	}
}

// testGroups: every group gets every message; within a group of 3 members
// each message is handled by exactly one member.
func (s *suite) testGroups(t *testing.T) {
	const n = 300
	tr := s.open(t)
	topic := UniqueTopic(t)
	soloA, soloB := newRecorder(), newRecorder()
	trio := newRecorder()
	var mu sync.Mutex
	members := map[string]map[int]bool{} // ID -> members of the trio that handled it
	s.subscribe(t, tr, topic, soloA.handle, transport.SubscribeOptions{Group: UniqueGroup(t)})
	s.subscribe(t, tr, topic, soloB.handle, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 4})
	trioGroup := UniqueGroup(t)
	for member := range 3 {
		s.subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
			mu.Lock()
			if members[m.ID] == nil {
				members[m.ID] = map[int]bool{}
			}
			members[m.ID][member] = true
			mu.Unlock()
			trio.add(m)
			return nil
		}, transport.SubscribeOptions{Group: trioGroup, Concurrency: 2})
	}
	msgs := makeMsgs(topic, n, func(i int) string { return "k" + strconv.Itoa(i%30) })
	s.publish(t, tr, topic, msgs, 100)
	want := ids(msgs)
	s.waitFor(t, "every message in group A", soloA.hasAll(want))
	s.waitFor(t, "every message in group B", soloB.hasAll(want))
	s.waitFor(t, "every message in the group of 3", trio.hasAll(want))
	mu.Lock()
	defer mu.Unlock()
	bad := 0
	for _, id := range want {
		if len(members[id]) != 1 {
			if bad < 5 {
				t.Errorf("message %s handled by %d members of the group of 3, want exactly 1", id, len(members[id]))
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("... %d messages in all handled by more than one member", bad)
	}
}

// testSlowKeyBlocksOnlyItself: with Concurrency 2, a handler stuck on one
// key holds up that key's later messages and nothing else: every message
// of ten other keys (some of which share any hash bucket, shard or worker
// with it) is handled meanwhile. Then the stuck one returns and its key
// goes on, in order.
func (s *suite) testSlowKeyBlocksOnlyItself(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	rec := newRecorder()
	var slowLate atomic.Bool // slow-1 handled while slow-0 was stuck
	var stuck atomic.Bool
	s.subscribe(t, tr, topic, func(ctx context.Context, m *transport.Message) error {
		if m.Key == "slow" {
			if m.Header["seq"] == "0" {
				stuck.Store(true)
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
				stuck.Store(false)
			} else if stuck.Load() {
				slowLate.Store(true)
			}
		}
		rec.add(m)
		return nil
	}, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 2})
	t.Cleanup(unblock) // before the subscription's Close (cleanups run last first)

	slow := makeMsgs("slow", 2, func(int) string { return "slow" })
	s.publish(t, tr, topic, slow, 0)
	s.waitFor(t, "the slow key's first message to start", func() (bool, string) {
		return stuck.Load(), "slow-0 not started"
	})
	others := makeMsgs("other", 40, func(i int) string { return "other-" + strconv.Itoa(i%10) })
	s.publish(t, tr, topic, others, 0)
	s.waitFor(t, "every message of the other keys while one key is stuck", rec.hasAll(ids(others)))
	if rec.has(slow[1].ID) || slowLate.Load() {
		t.Fatal("the stuck key's second message was handled while its first was still running")
	}
	unblock()
	s.waitFor(t, "the stuck key's messages after it returned", rec.hasAll(ids(slow)))
}

// testKeyOrder: per-key order under Concurrency 8 with random handler
// delays, while different keys really run in parallel.
func (s *suite) testKeyOrder(t *testing.T) {
	const keys, perKey = 16, 100
	tr := s.open(t)
	topic := UniqueTopic(t)
	type keyState struct {
		inflight atomic.Int32
		mu       sync.Mutex
		next     int // the lowest sequence number not yet handled
	}
	state := make(map[string]*keyState, keys)
	for k := range keys {
		state["key-"+strconv.Itoa(k)] = &keyState{}
	}
	var (
		overlap    maxGauge
		violations atomic.Int64
		errMu      sync.Mutex
		errs       []string
	)
	report := func(format string, args ...any) {
		if violations.Add(1) <= 5 {
			errMu.Lock()
			errs = append(errs, fmt.Sprintf(format, args...))
			errMu.Unlock()
		}
	}
	rec := newRecorder()
	s.subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
		ks := state[m.Key]
		if ks == nil {
			report("message %s with unknown key %q", m.ID, m.Key)
			return nil
		}
		seq, _ := strconv.Atoi(m.Header["seq"])
		if ks.inflight.Add(1) > 1 {
			report("key %s: two handlers at once (message %s)", m.Key, m.ID)
		}
		overlap.inc()
		ks.mu.Lock()
		if seq > ks.next {
			report("key %s: message #%d handled before #%d", m.Key, seq, ks.next)
		}
		if seq == ks.next {
			ks.next++
		}
		ks.mu.Unlock()
		time.Sleep(rand.N(300 * time.Microsecond)) // simulated work of random length
		overlap.dec()
		ks.inflight.Add(-1)
		rec.add(m)
		return nil
	}, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 8})

	// Keys interleave in a different order each round, so no fixed rotation
	// of keys can line up with a transport's round robin.
	rng := rand.New(rand.NewPCG(7, 11))
	msgs := make([]*transport.Message, 0, keys*perKey)
	for i := range perKey {
		for _, k := range rng.Perm(keys) {
			key := "key-" + strconv.Itoa(k)
			msgs = append(msgs, &transport.Message{
				ID:     fmt.Sprintf("%s-%s-%d", topic, key, i),
				Key:    key,
				Header: map[string]string{"seq": strconv.Itoa(i)},
				Body:   []byte(strconv.Itoa(i)),
			})
		}
	}
	s.publish(t, tr, topic, msgs, 200)
	s.waitFor(t, "every message", rec.hasAll(ids(msgs)))
	errMu.Lock()
	for _, e := range errs {
		t.Error(e)
	}
	errMu.Unlock()
	if v := violations.Load(); v > 5 {
		t.Errorf("... %d violations in all", v)
	}
	if p := overlap.peak.Load(); p < 2 {
		t.Errorf("at most %d handler ran at once with Concurrency 8 and %d keys: different keys did not run in parallel", p, keys)
	} else {
		t.Logf("peak handlers at once: %d (Concurrency 8)", p)
	}
}

// testRedelivery: a handler error leads to redelivery; the first two
// attempts fail, the message is still handled.
func (s *suite) testRedelivery(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	var mu sync.Mutex
	attempts := map[string][]int{} // ID -> Attempt of each delivery
	bodies := map[string][]byte{}
	done := newRecorder()
	s.subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		attempts[m.ID] = append(attempts[m.ID], m.Attempt)
		n := len(attempts[m.ID])
		if b, ok := bodies[m.ID]; ok && !bytes.Equal(b, m.Body) {
			t.Errorf("%s: redelivered body %q differs from first delivery %q", m.ID, m.Body, b)
		}
		bodies[m.ID] = bytes.Clone(m.Body)
		mu.Unlock()
		if n <= 2 {
			return fmt.Errorf("transporttest: planned failure %d of %s", n, m.ID)
		}
		done.add(m)
		return nil
	}, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 2})
	msgs := makeMsgs(topic, 3, func(i int) string { return []string{"a", "b", ""}[i] })
	s.publish(t, tr, topic, msgs, 0)
	s.waitFor(t, "each message handled after two failures", done.hasAll(ids(msgs)))
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids(msgs) {
		a := attempts[id]
		if len(a) < 3 {
			t.Errorf("%s: %d deliveries, want at least 3", id, len(a))
			continue
		}
		if !s.h.Caps.CountsAttempts {
			continue
		}
		if a[0] != 1 {
			t.Errorf("%s: first Attempt %d, want 1", id, a[0])
		}
		for i := 1; i < len(a); i++ {
			if a[i] <= a[i-1] {
				t.Errorf("%s: Attempt did not increase on redelivery: %v", id, a)
				break
			}
		}
	}
}

// testHandlerPanic: a handler that panics does not crash the process; its
// message counts as failed and is delivered again, and later messages of
// the subscription are still handled.
func (s *suite) testHandlerPanic(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	var panicked atomic.Int32
	done := newRecorder()
	s.subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
		if m.ID == "panics" && panicked.Add(1) == 1 {
			panic("transporttest: planned panic")
		}
		done.add(m)
		return nil
	}, transport.SubscribeOptions{Group: UniqueGroup(t)})
	msgs := []*transport.Message{{ID: "panics", Key: "k", Body: []byte("1")}, {ID: "after", Key: "k", Body: []byte("2")}}
	s.publish(t, tr, topic, msgs, 0)
	s.waitFor(t, "the message whose handler panicked, delivered again, and the next one", done.hasAll(ids(msgs)))
	if n := panicked.Load(); n < 2 {
		t.Errorf("the panicking message was delivered %d times, want a redelivery", n)
	}
}

// testDurableRounds: on a durable transport, 5,000 messages consumed in 5
// rounds of subscribe/close lose nothing, including those published while no
// member was subscribed.
func (s *suite) testDurableRounds(t *testing.T) {
	if !s.h.Caps.Durable {
		t.Skip("transport is not durable (Caps.Durable is false)")
	}
	const rounds, half = 5, 500
	tr := s.open(t)
	topic, group := UniqueTopic(t), UniqueGroup(t)
	rec := newRecorder()
	opts := transport.SubscribeOptions{Group: group, Concurrency: 4, StartFrom: transport.StartEarliest}
	// Create the group's position, then leave it with no member.
	first := s.subscribe(t, tr, topic, rec.handle, opts)
	s.closeSub(t, first)
	var all []string
	for r := range rounds {
		offline := makeMsgs(fmt.Sprintf("%s-r%d-offline", topic, r), half, func(i int) string { return "k" + strconv.Itoa(i%10) })
		s.publish(t, tr, topic, offline, 250)
		sub := s.subscribe(t, tr, topic, rec.handle, opts)
		online := makeMsgs(fmt.Sprintf("%s-r%d-online", topic, r), half, func(i int) string { return "k" + strconv.Itoa(i%10) })
		s.publish(t, tr, topic, online, 250)
		all = append(append(all, ids(offline)...), ids(online)...)
		if r == rounds-1 {
			s.waitFor(t, "all 5,000 messages", rec.hasAll(all))
		} else {
			// Close mid-stream: some of this round's messages may be in flight.
			target := len(all) - half
			s.waitFor(t, fmt.Sprintf("round %d to make progress", r+1), func() (bool, string) {
				d := rec.distinct()
				return d >= target, fmt.Sprintf("%d of %d delivered", d, target)
			})
		}
		s.closeSub(t, sub)
	}
}

// startPositionSetup: an anchor group exists and has seen `old`, so the
// topic exists and old messages are in the broker; returns the topic and the
// old messages, all with one key (so order shows whether old ones come).
func (s *suite) startPositionSetup(t *testing.T, tr transport.Transport) (string, []*transport.Message) {
	topic := UniqueTopic(t)
	anchor := newRecorder()
	s.subscribe(t, tr, topic, anchor.handle, transport.SubscribeOptions{Group: UniqueGroup(t), StartFrom: transport.StartEarliest})
	old := makeMsgs(topic+"-old", 5, func(int) string { return "one-key" })
	s.publish(t, tr, topic, old, 0)
	s.waitFor(t, "the anchor group to get the old messages", anchor.hasAll(ids(old)))
	return topic, old
}

// testStartEarliest: a new group with StartEarliest gets what the broker
// retains (durable transports) and everything published after Subscribe.
func (s *suite) testStartEarliest(t *testing.T) {
	tr := s.open(t)
	topic, old := s.startPositionSetup(t, tr)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t), StartFrom: transport.StartEarliest})
	fresh := makeMsgs(topic+"-new", 5, func(int) string { return "one-key" })
	s.publish(t, tr, topic, fresh, 0)
	want := ids(fresh)
	if s.h.Caps.Durable {
		want = append(ids(old), want...)
	}
	s.waitFor(t, "the new group's messages", rec.hasAll(want))
}

// testStartLatest: a new group with StartLatest gets what is published after
// Subscribe returned, and nothing from before.
func (s *suite) testStartLatest(t *testing.T) {
	tr := s.open(t)
	topic, old := s.startPositionSetup(t, tr)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t), StartFrom: transport.StartLatest})
	fresh := makeMsgs(topic+"-new", 5, func(int) string { return "one-key" })
	s.publish(t, tr, topic, fresh, 0)
	s.waitFor(t, "messages published after Subscribe", rec.hasAll(ids(fresh)))
	// Same key, so any old message would have come before the new ones.
	for _, id := range ids(old) {
		if rec.has(id) {
			t.Errorf("StartLatest group got %s, published before it subscribed", id)
		}
	}
}

// testCloseDrains: a handler running when Close is called finishes, and its
// message is not redelivered afterwards.
func (s *suite) testCloseDrains(t *testing.T) {
	tr := s.open(t)
	topic, group := UniqueTopic(t), UniqueGroup(t)
	var (
		started  = make(chan struct{})
		closing  = make(chan struct{})
		finished atomic.Bool
		once     sync.Once
	)
	rec := newRecorder()
	slowID := topic + "-slow"
	opts := transport.SubscribeOptions{Group: group, StartFrom: transport.StartEarliest}
	sub := s.subscribe(t, tr, topic, func(ctx context.Context, m *transport.Message) error {
		rec.add(m)
		if m.ID != slowID {
			return nil
		}
		once.Do(func() { close(started) })
		select {
		case <-closing:
		case <-time.After(s.timeout):
		}
		time.Sleep(100 * time.Millisecond) // work that outlasts the call to Close
		finished.Store(true)
		return nil
	}, opts)
	s.publish(t, tr, topic, []*transport.Message{{ID: slowID, Key: "k", Body: []byte("slow")}}, 0)
	select {
	case <-started:
	case <-time.After(s.timeout):
		t.Fatalf("the handler did not start within %v", s.timeout)
	}
	close(closing)
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := sub.Close(ctx); err != nil {
		t.Fatalf("Subscription.Close: %v", err)
	}
	if !finished.Load() {
		t.Fatal("Subscription.Close returned before the running handler finished")
	}
	if err := sub.Close(ctx); err != nil {
		t.Errorf("second Subscription.Close: %v", err)
	}
	// A new member of the group must not get the drained message again. The
	// marker has the same key, so a redelivery would come before it.
	s.subscribe(t, tr, topic, rec.handle, opts)
	marker := topic + "-marker"
	s.publish(t, tr, topic, []*transport.Message{{ID: marker, Key: "k", Body: []byte("marker")}}, 0)
	s.waitFor(t, "the marker message", rec.hasAll([]string{marker}))
	if _, n := rec.get(slowID); n != 1 {
		t.Errorf("the message whose handler finished during Close was delivered %d times, want 1", n)
	}
}

// testTransportClose: Close twice is fine; Publish and Subscribe after Close
// return ErrClosed.
func (s *suite) testTransportClose(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	rec := newRecorder()
	sub := s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t)})
	msgs := makeMsgs(topic, 1, nil)
	s.publish(t, tr, topic, msgs, 0)
	s.waitFor(t, "a message before Close", rec.hasAll(ids(msgs)))
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx := s.ctx(t)
	if err := tr.Publish(ctx, topic, makeMsgs(topic+"-late", 1, nil)...); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
	if sub2, err := tr.Subscribe(ctx, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t)}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
		if sub2 != nil {
			_ = sub2.Close(ctx)
		}
	}
	if err := sub.Close(ctx); err != nil && !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscription.Close after Transport.Close: %v, want nil or ErrClosed", err)
	}
}

// testConcurrencyLimit: never more than Concurrency handlers at once (and 1
// when Concurrency is 0).
func (s *suite) testConcurrencyLimit(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	type limited struct {
		conc  int
		gauge maxGauge
		rec   *recorder
	}
	subs := []*limited{{conc: 4, rec: newRecorder()}, {conc: 0, rec: newRecorder()}}
	for _, l := range subs {
		s.subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
			l.gauge.inc()
			time.Sleep(rand.N(500 * time.Microsecond)) // simulated work
			l.gauge.dec()
			l.rec.add(m)
			return nil
		}, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: l.conc})
	}
	msgs := makeMsgs(topic, 200, func(i int) string {
		if i%4 == 0 {
			return "" // messages without a key too
		}
		return "k" + strconv.Itoa(i)
	})
	s.publish(t, tr, topic, msgs, 100)
	for _, l := range subs {
		s.waitFor(t, fmt.Sprintf("every message (Concurrency %d)", l.conc), l.rec.hasAll(ids(msgs)))
		limit := int64(max(l.conc, 1))
		if p := l.gauge.peak.Load(); p > limit {
			t.Errorf("Concurrency %d: %d handlers ran at once", l.conc, p)
		}
	}
}

// testConcurrentPublishers: 50 concurrent publishers x 100 messages all arrive.
func (s *suite) testConcurrentPublishers(t *testing.T) {
	const publishers, each = 50, 100
	tr := s.open(t)
	topic := UniqueTopic(t)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t), Concurrency: 8})
	var (
		wg  sync.WaitGroup
		all []string
	)
	for p := range publishers {
		msgs := makeMsgs(fmt.Sprintf("%s-p%d", topic, p), each, func(i int) string {
			if i%5 == 0 {
				return ""
			}
			return "p" + strconv.Itoa(p)
		})
		all = append(all, ids(msgs)...)
		wg.Go(func() {
			// The first messages one by one, the rest in batches.
			if err := s.tryPublish(tr, topic, msgs[:10], 1); err != nil {
				t.Error(err)
				return
			}
			if err := s.tryPublish(tr, topic, msgs[10:], 15); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	s.waitFor(t, "every message of 50 publishers", rec.hasAll(all))
}

// testPublishCancelled: Publish with a cancelled context returns the
// context's error.
func (s *suite) testPublishCancelled(t *testing.T) {
	tr := s.open(t)
	subscribed, unsubscribed := UniqueTopic(t), UniqueTopic(t)
	s.subscribe(t, tr, subscribed, newRecorder().handle, transport.SubscribeOptions{Group: UniqueGroup(t)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, topic := range []string{subscribed, unsubscribed} {
		err := tr.Publish(ctx, topic, makeMsgs(topic, 2, nil)...)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Publish to %s with a cancelled context: %v, want context.Canceled", topic, err)
		}
	}
}

// testInvalidInput: bad input gives the right sentinel error.
func (s *suite) testInvalidInput(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	ok := func(context.Context, *transport.Message) error { return nil }
	good := &transport.Message{ID: "ok", Body: []byte("x")}
	group := UniqueGroup(t)
	cases := []struct {
		name    string
		publish bool
		topic   string
		msgs    []*transport.Message
		h       transport.Handler
		opts    transport.SubscribeOptions
		want    error // nil: any error
	}{
		{name: "publish nil message", publish: true, topic: topic, msgs: []*transport.Message{nil}, want: transport.ErrInvalidMessage},
		{name: "publish nil among good", publish: true, topic: topic, msgs: []*transport.Message{good, nil}, want: transport.ErrInvalidMessage},
		{name: "publish empty topic", publish: true, topic: "", msgs: []*transport.Message{good}, want: transport.ErrInvalidTopic},
		{name: "publish topic with space", publish: true, topic: "a b", msgs: []*transport.Message{good}, want: transport.ErrInvalidTopic},
		{name: "publish topic with slash", publish: true, topic: "a/b", msgs: []*transport.Message{good}, want: transport.ErrInvalidTopic},
		{name: "publish topic with wildcard", publish: true, topic: "a.*", msgs: []*transport.Message{good}, want: transport.ErrInvalidTopic},
		{name: "publish topic with >", publish: true, topic: "a.>", msgs: []*transport.Message{good}, want: transport.ErrInvalidTopic},
		{name: "subscribe empty topic", topic: "", h: ok, opts: transport.SubscribeOptions{Group: group}, want: transport.ErrInvalidTopic},
		{name: "subscribe bad topic", topic: "bad topic!", h: ok, opts: transport.SubscribeOptions{Group: group}, want: transport.ErrInvalidTopic},
		{name: "subscribe missing group", topic: topic, h: ok, opts: transport.SubscribeOptions{}, want: transport.ErrInvalidOptions},
		{name: "subscribe bad group", topic: topic, h: ok, opts: transport.SubscribeOptions{Group: "a group"}, want: transport.ErrInvalidOptions},
		{name: "subscribe negative concurrency", topic: topic, h: ok, opts: transport.SubscribeOptions{Group: group, Concurrency: -1}, want: transport.ErrInvalidOptions},
		{name: "subscribe a million handlers", topic: topic, h: ok, opts: transport.SubscribeOptions{Group: group, Concurrency: 1 << 20}, want: transport.ErrInvalidOptions},
		{name: "subscribe bad start position", topic: topic, h: ok, opts: transport.SubscribeOptions{Group: group, StartFrom: 7}, want: transport.ErrInvalidOptions},
		{name: "subscribe nil handler", topic: topic, h: nil, opts: transport.SubscribeOptions{Group: group}, want: nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := s.ctx(t)
			var err error
			if c.publish {
				err = tr.Publish(ctx, c.topic, c.msgs...)
			} else {
				var sub transport.Subscription
				sub, err = tr.Subscribe(ctx, c.topic, c.h, c.opts)
				if err == nil && sub != nil {
					_ = sub.Close(ctx)
				}
			}
			switch {
			case err == nil:
				t.Errorf("no error, want %v", c.want)
			case c.want != nil && !errors.Is(err, c.want):
				t.Errorf("error %q does not wrap %q", err, c.want)
			default:
				t.Logf("error (as expected): %v", err)
			}
		})
	}
}

// testDeleteGroup: on a transport that implements transport.GroupDeleter, a
// deleted group has no position left: subscribed again with StartEarliest
// it gets the topic's messages once more, and another group's position is
// untouched. Deleting a group that does not exist is not an error.
func (s *suite) testDeleteGroup(t *testing.T) {
	tr := s.open(t)
	d, ok := tr.(transport.GroupDeleter)
	if !ok {
		t.Skip("transport does not implement transport.GroupDeleter")
	}
	topic, group, other := UniqueTopic(t), UniqueGroup(t), UniqueGroup(t)
	opts := transport.SubscribeOptions{Group: group, StartFrom: transport.StartEarliest}
	first, kept := newRecorder(), newRecorder()
	sub := s.subscribe(t, tr, topic, first.handle, opts)
	keep := s.subscribe(t, tr, topic, kept.handle, transport.SubscribeOptions{Group: other, StartFrom: transport.StartEarliest})
	msgs := makeMsgs(topic, 5, func(int) string { return "one-key" })
	s.publish(t, tr, topic, msgs, 0)
	s.waitFor(t, "the group to get the messages", first.hasAll(ids(msgs)))
	s.waitFor(t, "the other group to get the messages", kept.hasAll(ids(msgs)))
	s.closeSub(t, sub)
	s.closeSub(t, keep)
	if err := d.DeleteGroup(s.ctx(t), topic, group); err != nil {
		t.Fatalf("DeleteGroup: %v", err)
	}
	if err := d.DeleteGroup(s.ctx(t), topic, UniqueGroup(t)); err != nil {
		t.Errorf("DeleteGroup of a group that does not exist: %v", err)
	}
	if !s.h.Caps.Durable {
		return
	}
	again := newRecorder()
	s.subscribe(t, tr, topic, again.handle, opts)
	s.waitFor(t, "the deleted group to start from the earliest again", again.hasAll(ids(msgs)))
	// The other group kept its position: with StartEarliest it would get
	// the old messages again if its position were gone too.
	kept2 := newRecorder()
	s.subscribe(t, tr, topic, kept2.handle, transport.SubscribeOptions{Group: other, StartFrom: transport.StartEarliest})
	fresh := makeMsgs(topic+"-fresh", 1, func(int) string { return "one-key" })
	s.publish(t, tr, topic, fresh, 0)
	s.waitFor(t, "the other group to get a new message", kept2.hasAll(ids(fresh)))
	for _, id := range ids(msgs) {
		if kept2.has(id) {
			t.Errorf("group %s got %s again: deleting group %s moved its position", other, id, group)
		}
	}
}

// testCloseExpiredContext: Subscription.Close with a context that has
// already ended cancels the running handlers' context at once, waits for
// them to return (abandoned, not acknowledged), and returns the context's
// error as it is. A handler that ignores its context is not abandoned
// while it runs: Close does not return before it does. A second Close
// returns what the first one did.
func (s *suite) testCloseExpiredContext(t *testing.T) {
	tr := s.open(t)
	h := s.startStuck(t, tr)
	sub, sawEnd, returned := h.sub, &h.sawEnd, &h.returned
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sub.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscription.Close with an ended context: %v, want context.Canceled", err)
	}
	if !returned.Load() {
		t.Error("Subscription.Close returned before the abandoned handler did")
	}
	if !sawEnd.Load() {
		t.Error("the running handler's context was not cancelled by Close with an ended context")
	}
	// Idempotent: a later call returns what the first one did.
	if err := sub.Close(s.ctx(t)); !errors.Is(err, context.Canceled) {
		t.Errorf("second Subscription.Close: %v, want the first one's context.Canceled", err)
	}
}

// testCloseDrainTimeout: Transport.Close, whose drain timeout runs out
// while a handler waits for its context, cancels that context, returns
// only after the handler returned, and reports the abandoned handler: its
// error satisfies errors.Is(err, context.DeadlineExceeded), whether the
// transport redelivers the message later or, not durable, has lost it.
func (s *suite) testCloseDrainTimeout(t *testing.T) {
	if s.h.OpenDrain == nil {
		t.Skip("Harness.OpenDrain is nil: no transport with a drain timeout to open")
	}
	const drain = 300 * time.Millisecond
	tr := s.h.OpenDrain(t, drain)
	if tr == nil {
		t.Fatal("Harness.OpenDrain returned nil")
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = tr.Close()
		}
	})
	h := s.startStuck(t, tr)
	sawEnd, returned := &h.sawEnd, &h.returned
	start := time.Now()
	err := tr.Close()
	closed = true
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Transport.Close after its drain timeout abandoned a handler: %v, want context.DeadlineExceeded", err)
	}
	if el := time.Since(start); el < drain {
		t.Errorf("Transport.Close returned after %v, before its drain timeout %v", el, drain)
	}
	if !returned.Load() {
		t.Error("Transport.Close returned before the abandoned handler did")
	}
	if !sawEnd.Load() {
		t.Error("the running handler's context was not cancelled when the drain timeout ran out")
	}
}

// stuck is a subscription whose handler, running one message, waits for
// its context to end (or the suite's timeout), then does 50ms of clean-up
// work and returns ctx.Err(): what a Close must cancel and wait for.
type stuck struct {
	sub              transport.Subscription
	sawEnd, returned atomic.Bool
}

// startStuck subscribes a stuck handler to a new topic of tr and returns
// once it runs.
func (s *suite) startStuck(t *testing.T, tr transport.Transport) *stuck {
	t.Helper()
	topic, group := UniqueTopic(t), UniqueGroup(t)
	h := &stuck{}
	started := make(chan struct{})
	var once sync.Once
	sub, err := tr.Subscribe(s.ctx(t), topic, func(ctx context.Context, m *transport.Message) error {
		once.Do(func() { close(started) })
		select {
		case <-ctx.Done():
			h.sawEnd.Store(true)
		case <-time.After(s.timeout):
		}
		time.Sleep(50 * time.Millisecond) // clean-up work after the cancellation
		h.returned.Store(true)
		return ctx.Err()
	}, transport.SubscribeOptions{Group: group, StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	h.sub = sub
	s.publish(t, tr, topic, []*transport.Message{{ID: topic + "-1", Key: "k", Body: []byte("x")}}, 0)
	select {
	case <-started:
	case <-time.After(s.timeout):
		t.Fatalf("the handler did not start within %v", s.timeout)
	}
	return h
}

// foreignOption is a subscribe option of no busway transport.
type foreignOption struct{}

func (foreignOption) Transport() string { return "transporttest-foreign" }

// testForeignOptionsIgnored: a transport ignores the Specific options of
// other transports (and nil entries), so one SubscribeOptions works
// whichever transport a URL selects.
func (s *suite) testForeignOptionsIgnored(t *testing.T) {
	tr := s.open(t)
	topic := UniqueTopic(t)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t),
		Specific: []transport.SpecificOption{foreignOption{}, nil}})
	msgs := makeMsgs(topic, 3, nil)
	s.publish(t, tr, topic, msgs, 0)
	s.waitFor(t, "the messages of a subscription with another transport's options", rec.hasAll(ids(msgs)))
}
