package main

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busway/busway"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
)

// embeddedNATS starts an embedded NATS server for the test and returns the
// URL and the server's own transport (which made the stream).
func embeddedNATS(t *testing.T) (string, *busnats.Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	srv, err := busnats.New(ctx, busnats.Config{Embedded: &busnats.EmbeddedConfig{StoreDir: t.TempDir()}})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	u, err := url.Parse(srv.EmbeddedURL())
	if err != nil || u.Host == "" {
		t.Fatalf("embedded NATS URL %q: %v", srv.EmbeddedURL(), err)
	}
	return "nats://" + u.Host, srv
}

// kafkaURL starts a kfake cluster and returns a URL for it with settings
// that keep the test quick.
func kafkaURL(t *testing.T) string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.DefaultNumPartitions(3), kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return "kafka://" + strings.Join(c.ListenAddrs(), ",") +
		"?partitions=3&commit_interval=100ms&session_timeout=3s&heartbeat_interval=100ms&rebalance_timeout=5s&drain_timeout=3s&fetch_max_wait=100ms&retry_backoff=20ms&retry_backoff_max=500ms"
}

func TestTailNATS(t *testing.T) {
	u, srv := embeddedNATS(t)
	testTail(t, u)
	// tail's throwaway group is gone: no consumer is left on the stream.
	names := consumers(t, srv)
	if len(names) != 0 {
		t.Errorf("consumers left on the stream after tail: %v", names)
	}
	// Should tail be killed before it deletes it, the server deletes the
	// throwaway consumer once nothing pulls from it.
	tail := start(t, nil, "tail", u, "orders")
	waitFor(t, 10*time.Second, "tail to subscribe", func() bool { return strings.Contains(tail.err.String(), "tailing") })
	names = consumers(t, srv)
	if len(names) != 1 {
		t.Fatalf("consumers while tail runs: %v, want its throwaway one", names)
	}
	c, err := srv.JetStream().Consumer(t.Context(), srv.Stream(), names[0])
	if err != nil {
		t.Fatal(err)
	}
	if it := c.CachedInfo().Config.InactiveThreshold; it != throwawayInactive {
		t.Errorf("throwaway consumer's InactiveThreshold %v, want %v", it, throwawayInactive)
	}
}

func TestTailKafka(t *testing.T) { testTail(t, kafkaURL(t)) }

// testTail: tail --from earliest sees events published before it started
// and after, and exits 0 after --count.
func testTail(t *testing.T, u string) {
	var ids []string
	pub := func(n int) {
		r := cli(t, nil, "publish", u, "orders", "--type", "order.created", "--key", "k", "--data", `{"n":`+strconvFormat(int64(n))+`}`)
		if r.code != 0 {
			t.Fatalf("publish: %v", r)
		}
		ids = append(ids, strings.TrimSpace(r.stdout))
	}
	pub(1)
	tail := start(t, nil, "tail", u, "orders", "--from", "earliest", "--count", "2")
	waitFor(t, 30*time.Second, "tail to subscribe", func() bool { return strings.Contains(tail.err.String(), "tailing") })
	pub(2)
	if code := tail.wait(t, time.Minute); code != 0 {
		t.Fatalf("tail exited %d\n%s", code, tail.err)
	}
	out := tail.out.String()
	for _, id := range ids {
		if !strings.Contains(out, "id="+id) {
			t.Errorf("tail did not print event %s:\n%s", id, out)
		}
	}
}

// consumers lists the consumers of the server's stream.
func consumers(t *testing.T, srv *busnats.Transport) []string {
	t.Helper()
	s, err := srv.JetStream().Stream(t.Context(), srv.Stream())
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	var names []string
	l := s.ConsumerNames(t.Context())
	for n := range l.Name() {
		names = append(names, n)
	}
	if err := l.Err(); err != nil && err != jetstream.ErrEndOfData {
		t.Fatalf("consumer names: %v", err)
	}
	return names
}

func TestDeadLettersNATS(t *testing.T) {
	u, srv := embeddedNATS(t)
	testDeadLetters(t, u, "2s")
	// Only the two service groups' consumers remain: list and replay
	// deleted their throwaway groups.
	names := consumers(t, srv)
	if len(names) != 2 {
		t.Errorf("consumers on the stream: %v, want only billing's and shipping's", names)
	}
}

func TestDeadLettersKafka(t *testing.T) { testDeadLetters(t, kafkaURL(t), "4s") }

// counts counts handler calls per event ID (ce_id).
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[string]int)
	}
	c.n[id]++
}

func (c *counts) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

// testDeadLetters: a service with groups billing (whose handler rejects a
// poison event) and shipping (which handles everything), both with
// DeadLetter > Idempotent. The poison event is dead-lettered by billing;
// dlq list shows it with its reason; a dry run changes nothing; after the
// handler is fixed, dlq replay sends it back: billing handles it exactly
// once, shipping gets it again and its Idempotent skips it; a second replay
// sends nothing.
func testDeadLetters(t *testing.T, u, wait string) {
	ctx := t.Context()
	svc, err := busway.Open(ctx, u)
	if err != nil {
		t.Fatalf("open %s: %v", u, err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	var fixed atomic.Bool
	var seenMu sync.Mutex
	var shippingMsgs []*transport.Message                          // shipping's deliveries of the poison event
	delivered := map[string]*counts{"billing": {}, "shipping": {}} // outside Idempotent
	handled := map[string]*counts{"billing": {}, "shipping": {}}   // the handler's successes
	for _, g := range []string{"billing", "shipping"} {
		h := func(_ context.Context, m *transport.Message) error {
			if g == "billing" && strings.Contains(string(m.Body), "poison") && !fixed.Load() {
				return transport.Permanent(errBadSKU)
			}
			handled[g].add(m.Header[transport.HeaderID])
			return nil
		}
		chain := middleware.Chain(
			func(next transport.Handler) transport.Handler {
				return func(ctx context.Context, m *transport.Message) error {
					delivered[g].add(m.Header[transport.HeaderID])
					if g == "shipping" && strings.Contains(string(m.Body), "poison") {
						seenMu.Lock()
						shippingMsgs = append(shippingMsgs, m.Clone())
						seenMu.Unlock()
					}
					return next(ctx, m)
				}
			},
			middleware.DeadLetter(svc, middleware.DeadLetterOptions{}),
			middleware.Idempotent(middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.IdempotentOptions{}),
		)(h)
		sub, err := svc.Subscribe(ctx, "orders", chain, transport.SubscribeOptions{Group: g, StartFrom: transport.StartEarliest})
		if err != nil {
			t.Fatalf("subscribe %s: %v", g, err)
		}
		t.Cleanup(func() { _ = sub.Close(context.Background()) })
	}

	publish := func(key, data string) string {
		r := cli(t, nil, "publish", u, "orders", "--type", "order.created", "--key", key, "--data", data)
		if r.code != 0 {
			t.Fatalf("publish: %v", r)
		}
		return strings.TrimSpace(r.stdout)
	}
	good := publish("1", `{"sku":"ok"}`)
	poison := publish("2", `{"sku":"poison"}`)
	waitFor(t, time.Minute, "both groups to get both events", func() bool {
		return handled["billing"].get(good) == 1 && handled["shipping"].get(good) == 1 &&
			handled["shipping"].get(poison) == 1 && delivered["billing"].get(poison) == 1
	})

	// list: the poison event, with billing's reason.
	var list result
	waitFor(t, time.Minute, "dlq list to show the poison event", func() bool {
		list = cli(t, nil, "dlq", "list", u, "orders", "--wait", wait)
		if list.code != 0 {
			t.Fatalf("dlq list: %v", list)
		}
		return strings.Contains(list.stdout, poison)
	})
	rows := strings.Split(strings.TrimSpace(list.stdout), "\n")
	if len(rows) != 2 || !strings.HasPrefix(rows[0], "ID") {
		t.Fatalf("dlq list: want a header and one row:\n%s", list.stdout)
	}
	for _, want := range []string{poison, "order.created", "billing", errBadSKU.Error()} {
		if !strings.Contains(rows[1], want) {
			t.Errorf("dlq list row %q lacks %q", rows[1], want)
		}
	}
	if strings.Contains(list.stdout, good) {
		t.Errorf("dlq list shows the good event %s:\n%s", good, list.stdout)
	}

	// A dry run changes nothing.
	dry := cli(t, nil, "dlq", "replay", u, "orders", "--all", "--dry-run", "--wait", wait)
	if dry.code != 0 || !strings.Contains(dry.stdout, "would replay event "+poison) || !strings.Contains(dry.stdout, "nothing was published") {
		t.Fatalf("dry run: %v", dry)
	}
	if again := cli(t, nil, "dlq", "list", u, "orders", "--wait", wait); !strings.Contains(again.stdout, poison) {
		t.Fatalf("after the dry run the dead letter is gone: %v", again)
	}
	if n := delivered["billing"].get(poison); n != 1 {
		t.Errorf("after the dry run billing got the poison event %d times, want 1", n)
	}

	// An --id that is not a dead letter: exit 7, nothing replayed.
	if r := cli(t, nil, "dlq", "replay", u, "orders", "--id", good, "--wait", wait); r.code != exitIncomplete || !strings.Contains(r.stderr, good) {
		t.Errorf("replay --id of an event that is not dead-lettered: %v", r)
	}

	// Fix the handler, replay.
	fixed.Store(true)
	rep := cli(t, nil, "dlq", "replay", u, "orders", "--id", poison, "--wait", wait)
	if rep.code != 0 || !strings.Contains(rep.stdout, "replayed 1 of 1 event(s)") {
		t.Fatalf("replay: %v", rep)
	}
	waitFor(t, time.Minute, "billing to handle the replayed event and shipping to get it", func() bool {
		return handled["billing"].get(poison) == 1 && delivered["shipping"].get(poison) == 2
	})
	seenMu.Lock()
	orig, replay := shippingMsgs[0], shippingMsgs[1]
	seenMu.Unlock()
	if replay.Header[transport.HeaderID] != poison || replay.ID == orig.ID || replay.ID == "" {
		t.Errorf("the replay has ce_id %q and Message.ID %q (original %q): want the event ID kept and a new Message.ID",
			replay.Header[transport.HeaderID], replay.ID, orig.ID)
	}
	for k := range replay.Header {
		if strings.HasPrefix(k, "busway-dlq-") {
			t.Errorf("the replay carries the dead-letter header %s", k)
		}
	}
	if n := handled["shipping"].get(poison); n != 1 {
		t.Errorf("shipping handled the event %d times, want 1 (Idempotent skips the replay)", n)
	}

	// Replayed: no longer listed, and a second replay sends nothing.
	if r := cli(t, nil, "dlq", "list", u, "orders", "--wait", wait); r.code != 0 || strings.Contains(r.stdout, poison) {
		t.Errorf("after the replay dlq list still shows it: %v", r)
	}
	if r := cli(t, nil, "dlq", "replay", u, "orders", "--all", "--wait", wait); r.code != 0 || !strings.Contains(r.stdout, "replayed 0 of 0") {
		t.Errorf("a second replay: %v", r)
	}
	// A later event, after which billing must not have got the poison event
	// a third time.
	last := publish("2", `{"sku":"after"}`)
	waitFor(t, time.Minute, "billing to handle a later event of the key", func() bool { return handled["billing"].get(last) == 1 })
	if n := delivered["billing"].get(poison); n != 2 {
		t.Errorf("billing got the poison event %d times, want 2 (the original and one replay)", n)
	}
	if n := handled["billing"].get(poison); n != 1 {
		t.Errorf("billing handled the poison event %d times, want exactly 1", n)
	}
}

var errBadSKU = &skuError{}

type skuError struct{}

func (*skuError) Error() string { return "unknown SKU poison" }
