package chanbus

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/internal/fdcheck"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

func TestMain(m *testing.M) { fdcheck.Main(m) }

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		Open: func(*testing.T) transport.Transport { return New() },
		OpenDrain: func(_ *testing.T, d time.Duration) transport.Transport {
			return New(WithDrainTimeout(d))
		},
		Caps:    transporttest.Capabilities{Durable: false, CountsAttempts: true},
		Timeout: 15 * time.Second,
	})
}

func openT(t *testing.T, opts ...Option) *Transport {
	t.Helper()
	tr := New(opts...)
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

func subscribe(t *testing.T, tr *Transport, topic string, h transport.Handler, o transport.SubscribeOptions) transport.Subscription {
	t.Helper()
	sub, err := tr.Subscribe(t.Context(), topic, h, o)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() {
		if err := sub.Close(context.Background()); err != nil {
			t.Errorf("Subscription.Close: %v", err)
		}
	})
	return sub
}

func msg(id, key string) *transport.Message {
	return &transport.Message{ID: id, Key: key, Body: []byte(id)}
}

func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestPublishBlocksWhenFull: a full shard makes Publish block until its
// context ends (backpressure), and nothing queued is lost.
func TestPublishBlocksWhenFull(t *testing.T) {
	tr := openT(t, WithBuffer(1), WithShards(1))
	started := make(chan string, 3) // one per message this test publishes
	release := make(chan struct{})
	var handled atomic.Int32
	subscribe(t, tr, "bp", func(ctx context.Context, m *transport.Message) error {
		started <- m.ID
		<-release
		handled.Add(1)
		return nil
	}, transport.SubscribeOptions{Group: "g"})

	ctx := within(t, 10*time.Second)
	if err := tr.Publish(ctx, "bp", msg("m1", "k")); err != nil {
		t.Fatal(err)
	}
	if id := <-started; id != "m1" {
		t.Fatalf("first handled %s", id)
	}
	// The handler holds m1; m2 fills the shard's buffer of 1.
	if err := tr.Publish(ctx, "bp", msg("m2", "k")); err != nil {
		t.Fatal(err)
	}
	const wait = 50 * time.Millisecond
	start := time.Now()
	err := tr.Publish(within(t, wait), "bp", msg("m3", "k"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish to a full shard: %v, want context.DeadlineExceeded", err)
	}
	if el := time.Since(start); el < wait {
		t.Errorf("Publish returned after %v, before its context ended (%v)", el, wait)
	}
	// A cancelled context unblocks it too, and a batch that was partly
	// queued reports which messages failed.
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1) // the publisher's result
	go func() { errc <- tr.Publish(cctx, "bp", msg("m4", "other-key")) }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked Publish after cancel: %v, want context.Canceled", err)
	}
	close(release)
	if err := tr.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := handled.Load(); n != 2 {
		t.Errorf("handled %d messages, want 2 (m1, m2)", n)
	}
}

func TestPublishPartlyQueuedBatch(t *testing.T) {
	tr := openT(t, WithBuffer(1), WithShards(1))
	release := make(chan struct{})
	started := make(chan struct{}, 1) // the first handler call signals; later calls skip
	subscribe(t, tr, "batch", func(ctx context.Context, m *transport.Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return nil
	}, transport.SubscribeOptions{Group: "g"})
	defer close(release)
	ctx := within(t, 10*time.Second)
	if err := tr.Publish(ctx, "batch", msg("a", "")); err != nil {
		t.Fatal(err)
	}
	<-started
	err := tr.Publish(within(t, 30*time.Millisecond), "batch", msg("b", ""), msg("c", ""), msg("d", ""))
	var pe *transport.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want a *PublishError wrapping DeadlineExceeded", err)
	}
	if len(pe.Failures) != 2 || pe.Failures[0].ID != "c" || pe.Failures[1].ID != "d" || pe.Total != 3 {
		t.Errorf("failures %+v of %d, want c and d of 3", pe.Failures, pe.Total)
	}
}

// TestBlockedPublishReturnsWhenGroupLeaves: a publisher waiting on a full
// shard is released (the message dropped) when the group's last member
// leaves.
func TestBlockedPublishReturnsWhenGroupLeaves(t *testing.T) {
	tr := openT(t, WithBuffer(1), WithShards(1))
	started := make(chan struct{}, 1) // the first handler call signals
	release := make(chan struct{})
	sub := subscribe(t, tr, "leave", func(ctx context.Context, m *transport.Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return nil
	}, transport.SubscribeOptions{Group: "g"})
	ctx := within(t, 10*time.Second)
	for _, id := range []string{"a", "b"} {
		if err := tr.Publish(ctx, "leave", msg(id, "k")); err != nil {
			t.Fatal(err)
		}
		if id == "a" {
			<-started
		}
	}
	errc := make(chan error, 1) // the blocked publisher's result
	go func() { errc <- tr.Publish(ctx, "leave", msg("c", "k")) }()
	closed := make(chan error, 1) // Close's result
	go func() { closed <- sub.Close(ctx) }()
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Errorf("blocked Publish when the group left: %v, want nil (dropped)", err)
	}
	if err := tr.WaitIdle(ctx); err != nil {
		t.Errorf("WaitIdle after the group left: %v", err)
	}
}

// TestBackoffNotHotLoop: an always-failing handler is retried with backoff,
// not in a loop; attempts are counted, gaps grow.
func TestBackoffNotHotLoop(t *testing.T) {
	const minB, maxB = 10 * time.Millisecond, 40 * time.Millisecond
	tr := openT(t, WithBackoff(minB, maxB))
	var (
		mu       sync.Mutex
		at       []time.Time
		attempts []int
	)
	subscribe(t, tr, "fail", func(ctx context.Context, m *transport.Message) error {
		mu.Lock()
		defer mu.Unlock()
		at = append(at, time.Now())
		attempts = append(attempts, m.Attempt)
		return errors.New("always fails")
	}, transport.SubscribeOptions{Group: "g"})
	if err := tr.Publish(t.Context(), "fail", msg("x", "k")); err != nil {
		t.Fatal(err)
	}
	const window = 300 * time.Millisecond
	time.Sleep(window) // the measurement window: count the attempts made in it
	mu.Lock()
	defer mu.Unlock()
	// Backoff 10, 20, 40, 40, ...ms: at most 1 + 2 + (300-30)/40 = 9 in 300ms.
	if len(at) > 10 {
		t.Fatalf("%d attempts in %v: a hot loop", len(at), window)
	}
	if len(at) < 3 {
		t.Fatalf("%d attempts in %v, want at least 3", len(at), window)
	}
	for i := range attempts {
		if attempts[i] != i+1 {
			t.Fatalf("Attempt values %v, want 1, 2, 3, ...", attempts)
		}
	}
	for i := 1; i < len(at); i++ {
		want := min(minB<<(i-1), maxB)
		if gap := at[i].Sub(at[i-1]); gap < want {
			t.Errorf("gap before attempt %d: %v, want at least %v", i+1, gap, want)
		}
	}
}

// TestRetryKeepsKeyOrder: a failed message is redelivered before the later
// messages of its key, while other keys go on.
func TestRetryKeepsKeyOrder(t *testing.T) {
	tr := openT(t, WithBackoff(20*time.Millisecond, 20*time.Millisecond), WithShards(64))
	var (
		mu    sync.Mutex
		order []string
		fails = map[string]int{"k-0": 2}
	)
	done := make(chan struct{})
	subscribe(t, tr, "order", func(ctx context.Context, m *transport.Message) error {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, fmt.Sprintf("%s@%d", m.ID, m.Attempt))
		if fails[m.ID] > 0 {
			fails[m.ID]--
			return errors.New("planned")
		}
		if m.ID == "k-2" {
			close(done)
		}
		return nil
	}, transport.SubscribeOptions{Group: "g", Concurrency: 2})
	if err := tr.Publish(t.Context(), "order", msg("k-0", "k"), msg("k-1", "k"), msg("k-2", "k")); err != nil {
		t.Fatal(err)
	}
	// Another key proceeds while "k" waits in backoff.
	if err := tr.Publish(t.Context(), "order", msg("other", "other-key")); err != nil {
		t.Fatal(err)
	}
	<-done
	mu.Lock()
	defer mu.Unlock()
	var keyK []string
	for _, s := range order {
		if strings.HasPrefix(s, "k-") {
			keyK = append(keyK, s)
		}
	}
	if want := "k-0@1 k-0@2 k-0@3 k-1@1 k-2@1"; strings.Join(keyK, " ") != want {
		t.Errorf("key k handled as %v, want %s", keyK, want)
	}
	if i := indexOf(order, "other@1"); i < 0 || i > indexOf(order, "k-0@3") {
		t.Errorf("other key waited for the backoff of key k: %v", order)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func TestWaitIdle(t *testing.T) {
	tr := openT(t, WithBackoff(time.Hour, time.Hour))
	if err := tr.WaitIdle(within(t, time.Second)); err != nil {
		t.Fatalf("WaitIdle with nothing published: %v", err)
	}
	release := make(chan struct{})
	var handled atomic.Int32
	subscribe(t, tr, "idle", func(ctx context.Context, m *transport.Message) error {
		if m.ID == "fails" {
			return errors.New("fails, then waits an hour in backoff")
		}
		<-release
		handled.Add(1)
		return nil
	}, transport.SubscribeOptions{Group: "g", Concurrency: 4})
	ctx := within(t, 10*time.Second)
	for i := range 10 {
		if err := tr.Publish(ctx, "idle", msg(fmt.Sprint(i), fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Publish(ctx, "idle", msg("fails", "f")); err != nil {
		t.Fatal(err)
	}
	if err := tr.WaitIdle(within(t, 20*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitIdle with blocked handlers: %v, want DeadlineExceeded", err)
	}
	close(release)
	if err := tr.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := handled.Load(); n != 10 {
		t.Errorf("WaitIdle returned with %d of 10 messages handled", n)
	}
	// A message to a topic without groups is dropped: nothing to wait for.
	if err := tr.Publish(ctx, "nobody", msg("x", "")); err != nil {
		t.Fatal(err)
	}
	if err := tr.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCloseCancelsHandlersAfterDeadline: Close waits for handlers until its
// ctx ends, then cancels their context; Transport.Close still waits for them.
func TestCloseCancelsHandlersAfterDeadline(t *testing.T) {
	tr := New()
	started := make(chan struct{})
	var sawCancel atomic.Bool
	sub, err := tr.Subscribe(t.Context(), "cancel", func(ctx context.Context, m *transport.Message) error {
		close(started)
		<-ctx.Done()
		sawCancel.Store(true)
		return ctx.Err()
	}, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), "cancel", msg("a", "")); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := sub.Close(within(t, 20*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a stuck handler: %v, want DeadlineExceeded", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if !sawCancel.Load() {
		t.Error("the handler's context was not cancelled")
	}
}

func TestOptions(t *testing.T) {
	for _, c := range []struct {
		name string
		opts []Option
		want config
	}{
		{"defaults", nil, config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: DefaultDrainTimeout}},
		{"set", []Option{WithBuffer(3), WithShards(5), WithBackoff(time.Millisecond, time.Minute), WithDrainTimeout(0)}, config{buffer: 3, shards: 5, backoffMin: time.Millisecond, backoffMax: time.Minute, drain: 0}},
		{"below 1 means default", []Option{WithBuffer(0), WithShards(-1), WithDrainTimeout(-time.Second), nil}, config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: DefaultDrainTimeout}},
		{"max below min", []Option{WithBackoff(time.Second, 0)}, config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: time.Second, backoffMax: time.Second, drain: DefaultDrainTimeout}},
		{"min 0 means default", []Option{WithBackoff(0, time.Minute)}, config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: time.Minute, drain: DefaultDrainTimeout}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := New(c.opts...)
			defer tr.Close()
			got := tr.cfg
			got.logger = nil
			if got != c.want {
				t.Errorf("config %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	tr := New(WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	defer tr.Close()
	for attempt, want := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 80 * time.Millisecond, 5: 100 * time.Millisecond, 500: 100 * time.Millisecond} {
		if got := tr.backoffDelay(attempt); got != want {
			t.Errorf("attempt %d: %v, want %v", attempt, got, want)
		}
	}
}

func TestURL(t *testing.T) {
	var mux transport.Mux
	if err := mux.Register(Scheme, Opener()); err != nil {
		t.Fatal(err)
	}
	ok := []struct {
		url  string
		want config
	}{
		{"chan://", config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: DefaultDrainTimeout}},
		{"chan:///", config{buffer: DefaultBuffer, shards: DefaultShards, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: DefaultDrainTimeout}},
		{"chan://?buffer=8&shards=4&backoff_min=5ms&backoff_max=2s&drain_timeout=3s", config{buffer: 8, shards: 4, backoffMin: 5 * time.Millisecond, backoffMax: 2 * time.Second, drain: 3 * time.Second}},
	}
	for _, c := range ok {
		tr, err := mux.Open(t.Context(), c.url)
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		got := tr.(*Transport).cfg
		got.logger = nil
		if got != c.want {
			t.Errorf("%s: config %+v, want %+v", c.url, got, c.want)
		}
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
	}
	bad := []struct{ url, part string }{
		{"chan://?bogus=1", `query option "bogus"`},
		{"chan://?buffer=0", `query option "buffer"`},
		{"chan://?buffer=lots", `query option "buffer"`},
		{"chan://?shards=-2", `query option "shards"`},
		{"chan://?backoff_min=0s", `query option "backoff_min"`},
		{"chan://?backoff_min=fast", `query option "backoff_min"`},
		{"chan://?backoff_min=50ms&backoff_max=10ms", `query option "backoff_max"`},
		{"chan://?buffer=1&buffer=2", `query option "buffer"`},
		{"chan://?buffer=1000000000", `query option "buffer"`},           // a group would allocate 16 x 1e9 slots
		{"chan://?buffer=100000&shards=100000", `query option "buffer"`}, // 1e10
		{"chan://?buffer=9223372036854775807&shards=2", `query option "buffer"`},
		{"chan://?shards=99999999", `query option "shards"`}, // the default buffer x this
		{"chan://?buffer=99999999", `query option "buffer"`},
		{"chan://somehost", "host"},
		{"chan://user:secret@", "userinfo"},
		{"chan:///some/path", "path"},
		{"chan:opaque", "url"},
	}
	for _, c := range bad {
		tr, err := mux.Open(t.Context(), c.url)
		if err == nil {
			tr.Close()
			t.Errorf("%s: no error", c.url)
			continue
		}
		var ue *transport.URLError
		if !errors.As(err, &ue) || !errors.Is(err, transport.ErrInvalidURL) || ue.Part != c.part {
			t.Errorf("%s: %v; want a URLError about %s wrapping ErrInvalidURL", c.url, err, c.part)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error shows the password: %v", c.url, err)
		}
	}
}

// TestGroupsShareShards: two members of one group never run one key's
// messages at the same time, and the group is removed with its last member.
func TestMembersShareKeyOrder(t *testing.T) {
	tr := openT(t, WithShards(4))
	var (
		inflight  sync.Map // key -> *atomic.Int32
		overlap   atomic.Bool
		handled   atomic.Int32
		byMember  [2]atomic.Int32
		lastSeqMu sync.Mutex
		lastSeq   = map[string]int{}
		outOfSeq  atomic.Bool
	)
	for member := range 2 {
		subscribe(t, tr, "members", func(ctx context.Context, m *transport.Message) error {
			c, _ := inflight.LoadOrStore(m.Key, new(atomic.Int32))
			if c.(*atomic.Int32).Add(1) > 1 {
				overlap.Store(true)
			}
			var seq int
			fmt.Sscanf(m.Header["seq"], "%d", &seq)
			lastSeqMu.Lock()
			if prev, ok := lastSeq[m.Key]; ok && seq != prev+1 || !ok && seq != 0 {
				outOfSeq.Store(true)
			}
			lastSeq[m.Key] = seq
			lastSeqMu.Unlock()
			time.Sleep(50 * time.Microsecond) // simulated work
			c.(*atomic.Int32).Add(-1)
			byMember[member].Add(1)
			handled.Add(1)
			return nil
		}, transport.SubscribeOptions{Group: "shared", Concurrency: 2})
	}
	var msgs []*transport.Message
	for i := range 100 {
		for k := range 8 {
			m := msg(fmt.Sprintf("%d-%d", k, i), fmt.Sprint("key", k))
			m.Header = map[string]string{"seq": fmt.Sprint(i)}
			msgs = append(msgs, m)
		}
	}
	ctx := within(t, 10*time.Second)
	if err := tr.Publish(ctx, "members", msgs...); err != nil {
		t.Fatal(err)
	}
	if err := tr.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if n := handled.Load(); n != 800 {
		t.Errorf("handled %d, want 800", n)
	}
	if overlap.Load() {
		t.Error("two members ran messages of one key at once")
	}
	if outOfSeq.Load() {
		t.Error("a key's messages were handled out of order")
	}
	t.Logf("member 1 handled %d, member 2 handled %d", byMember[0].Load(), byMember[1].Load())
}

func TestGroupRemovedWithLastMember(t *testing.T) {
	tr := openT(t)
	sub, err := tr.Subscribe(t.Context(), "rm", func(context.Context, *transport.Message) error { return nil }, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	n := len(*tr.topics.Load())
	if n != 0 {
		t.Errorf("%d topics left after the last member closed", n)
	}
}

// TestBlockedPublishGetsErrClosed: a publisher waiting on a full shard when
// the transport closes learns that its message was not taken.
func TestBlockedPublishGetsErrClosed(t *testing.T) {
	tr := New(WithBuffer(1), WithShards(1))
	started := make(chan struct{}, 1) // the first handler call signals
	release := make(chan struct{})
	sub, err := tr.Subscribe(t.Context(), "closing", func(ctx context.Context, m *transport.Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return nil
	}, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := within(t, 10*time.Second)
	if err := tr.Publish(ctx, "closing", msg("a", "k")); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := tr.Publish(ctx, "closing", msg("b", "k")); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1) // the blocked publisher's result
	go func() { errc <- tr.Publish(ctx, "closing", msg("c", "k")) }()
	closed := make(chan error, 1) // Close's result
	go func() { closed <- tr.Close() }()
	for !sub.(*subscription).stopping() {
		time.Sleep(time.Millisecond) // poll until Close has stopped the subscription
	}
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish blocked while the transport closed: %v, want ErrClosed", err)
	}
}

// TestURLOpenerDefaults: URLOpener.Options are the defaults that a URL's
// options override.
func TestURLOpenerDefaults(t *testing.T) {
	o := &URLOpener{Options: []Option{WithBuffer(7), WithShards(5), WithDrainTimeout(time.Second)}}
	for raw, want := range map[string]config{
		"chan://":                           {buffer: 7, shards: 5, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: time.Second},
		"chan://?shards=3":                  {buffer: 7, shards: 3, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax, drain: time.Second},
		"chan://?buffer=9&drain_timeout=0s": {buffer: 9, shards: 5, backoffMin: DefaultBackoffMin, backoffMax: DefaultBackoffMax},
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := o.OpenTransport(t.Context(), u)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if got := tr.(*Transport).cfg; got != want {
			t.Errorf("%s: config %+v, want %+v", raw, got, want)
		}
		tr.Close()
	}
}

func TestOpenerConformance(t *testing.T) {
	transporttest.CheckOpener(t, transporttest.OpenerHarness{Opener: &URLOpener{}, Scheme: Scheme,
		Bad: []transporttest.BadURL{{URL: "chan://?buffer=0", Part: `"buffer"`}, {URL: "chan://?drain_timeout=-1s", Part: `"drain_timeout"`}}})
}

// TestPublishRacingGroupRemoval: publishers keep publishing, keyed and
// keyless, while the group's last member leaves (a small buffer, so some
// of them wait for room): every Publish returns nil, the messages queued
// before the removal and those refused after it are counted off alike, and
// WaitIdle and WaitSettled return at once afterwards.
func TestPublishRacingGroupRemoval(t *testing.T) {
	for round := range 30 {
		tr := New(WithBuffer(2), WithShards(1))
		var handled atomic.Int64
		sub, err := tr.Subscribe(t.Context(), "race", func(context.Context, *transport.Message) error {
			handled.Add(1)
			return nil
		}, transport.SubscribeOptions{Group: "g", Concurrency: 2})
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for p := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					key := ""
					if p%2 == 0 {
						key = fmt.Sprint("k", i%3)
					}
					if err := tr.Publish(t.Context(), "race", &transport.Message{ID: fmt.Sprint(p, "-", i), Key: key}); err != nil {
						t.Errorf("round %d: Publish: %v", round, err)
						return
					}
				}
			})
		}
		for handled.Load() < 20 {
			time.Sleep(50 * time.Microsecond) // publishing is under way
		}
		if err := sub.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		if err := tr.WaitIdle(ctx); err != nil {
			t.Fatalf("round %d: WaitIdle after the group left: %v (a message counted and never counted off)", round, err)
		}
		if err := tr.WaitSettled(ctx); err != nil {
			t.Fatalf("round %d: WaitSettled after the group left: %v", round, err)
		}
		cancel()
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
