// Package transporttest is the conformance suite every busway transport runs,
// in the manner of gocloud's drivertest and testing/slogtest: the behaviour
// all transports share is tested once, here, and each transport's tests call
// Run with a Harness that opens it and capability flags for what differs.
//
//	func TestConformance(t *testing.T) {
//		transporttest.Run(t, transporttest.Harness{
//			Open: func(t *testing.T) transport.Transport { return chanbus.New() },
//			Caps: transporttest.Capabilities{CountsAttempts: true},
//		})
//	}
//
// # What it checks
//
// Each check is its own subtest that can fail on its own: the round trip of
// ID, Key, headers and body (binary, empty, 1 MiB or
// Capabilities.MaxBodyBytes); the fields set on delivery; topic isolation;
// groups (every group gets every message, each message goes to one member
// of a group); per-key order under Concurrency 8 while different keys
// overlap; redelivery after a handler error; a panicking handler that does
// not crash the process and is redelivered; no loss across subscribe/close
// rounds (durable transports only); StartEarliest and StartLatest; Close
// draining in-flight handlers; Close with a context that already ended
// (handlers cancelled, waited for, the context's error returned);
// Transport.Close whose drain timeout runs out (the same, its error
// context.DeadlineExceeded; needs Harness.OpenDrain); Close twice; ErrClosed after Close; the
// Concurrency limit; concurrent publishers; a cancelled Publish context;
// bad input (the sentinel errors of package transport); another
// transport's Specific options, which must be ignored; and, where the
// transport implements transport.GroupDeleter, DeleteGroup.
//
// Where busway meets the broker: a handler that calls runtime.Goexit (its
// message is redelivered and Close returns); a handler publishing follow-ups
// to its own topic, more than any buffer holds (no deadlock, nothing lost);
// one event published to two topics (both deliver it: deduplication is per
// topic); and busway's middleware over the transport: DeadLetter (each
// failing group's dead letter arrives once, with its reason headers, an ID
// of its own and the event's ce_id; the original is acknowledged only after
// it; a replay is delivered again; next to the broker's size limit, where
// the transport reports it with a MaxMessageBytes method, a dead letter
// still fits, or at least does not block its key), Idempotent (a re-sent ID is handled
// once) and Retry in place (key order kept). The suite imports package
// middleware for these (middleware imports only package transport, so no
// cycle arises): each of these promises depends on what the broker does
// underneath, so each must hold on every transport.
//
// # Brokers
//
// Every subtest uses topic and group names that are unique in the process and
// in the run (see UniqueTopic), so a real NATS server or Kafka cluster can be
// shared between runs. Waits are bounded by Harness.Timeout; deliveries are
// awaited by condition (polling with a deadline), never by sleeping. Messages
// may be delivered more than once (at-least-once) except where a subtest says
// otherwise, so the suite counts distinct IDs.
//
// # Stress
//
// With the environment variable BUS_STRESS=N, Run repeats the whole suite N
// times, each repetition a subtest "round-K".
package transporttest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/transport"
)

// Capabilities say which optional behaviours a transport has.
type Capabilities struct {
	// Durable: a group's position survives its subscriptions: messages
	// published while no member is subscribed are delivered when one
	// subscribes again.
	Durable bool
	// CountsAttempts: Message.Attempt increases on redelivery.
	CountsAttempts bool
	// MaxBodyBytes is the largest body the transport's broker takes (with a
	// few KiB of headers), for brokers configured below 1 MiB, such as a
	// nats-server with the default max_payload. RoundTrip's large body is
	// 1 MiB, or MaxBodyBytes when that is smaller. 0 means 1 MiB or more.
	MaxBodyBytes int
	// SkipHandlerGoexit, when not empty, skips the HandlerGoexit check and
	// says why (a known defect being fixed).
	SkipHandlerGoexit string
}

// Harness tells Run how to open the transport under test.
type Harness struct {
	// Open returns a new transport; the suite closes it (t.Cleanup). Called
	// once per subtest.
	Open func(t *testing.T) transport.Transport
	// Caps are the transport's optional behaviours.
	Caps Capabilities
	// Timeout bounds each wait for deliveries; 0 means 30s.
	Timeout time.Duration
	// OpenDrain, when not nil, returns a new transport whose Transport.Close
	// waits drain for running handlers before it cancels them (chanbus
	// WithDrainTimeout, NATS AckWait, Kafka Config.DrainTimeout), for the
	// CloseDrainTimeout check, which is skipped without it. The check
	// closes the transport itself.
	OpenDrain func(t *testing.T, drain time.Duration) transport.Transport
}

// DefaultTimeout is the wait bound used when Harness.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// StressEnv is the environment variable that repeats the suite: BUS_STRESS=N
// runs it N times.
const StressEnv = "BUS_STRESS"

// Run runs every conformance check as its own subtest. BUS_STRESS=N repeats
// the suite N times.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Open == nil {
		t.Fatal("transporttest: Harness.Open is nil")
	}
	s := &suite{h: h, timeout: h.Timeout}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	rounds := 1
	if v := os.Getenv(StressEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("transporttest: %s=%q: want a positive integer", StressEnv, v)
		}
		rounds = n
	}
	if rounds == 1 {
		s.runAll(t)
		return
	}
	for r := range rounds {
		t.Run(fmt.Sprintf("round-%d", r+1), s.runAll)
	}
}

type suite struct {
	h       Harness
	timeout time.Duration
}

func (s *suite) runAll(t *testing.T) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"RoundTrip", s.testRoundTrip},
		{"ValuesExactOrRefused", s.testValuesExactOrRefused},
		{"HeaderNamesExactOrRefused", s.testHeaderNamesExactOrRefused},
		{"System", s.testSystem},
		{"DeliveryFields", s.testDeliveryFields},
		{"TopicsIsolated", s.testTopicsIsolated},
		{"Groups", s.testGroups},
		{"KeyOrder", s.testKeyOrder},
		{"SlowKeyBlocksOnlyItself", s.testSlowKeyBlocksOnlyItself},
		{"Redelivery", s.testRedelivery},
		{"HandlerPanic", s.testHandlerPanic},
		{"DurableRounds", s.testDurableRounds},
		{"StartEarliest", s.testStartEarliest},
		{"StartLatest", s.testStartLatest},
		{"CloseDrains", s.testCloseDrains},
		{"CloseExpiredContext", s.testCloseExpiredContext},
		{"TransportClose", s.testTransportClose},
		{"CloseDrainTimeout", s.testCloseDrainTimeout},
		{"ConcurrencyLimit", s.testConcurrencyLimit},
		{"ConcurrentPublishers", s.testConcurrentPublishers},
		{"PublishCancelledContext", s.testPublishCancelled},
		{"InvalidInput", s.testInvalidInput},
		{"ForeignOptionsIgnored", s.testForeignOptionsIgnored},
		{"OversizeInBatch", s.testOversizeInBatch},
		{"DeleteGroup", s.testDeleteGroup},
		{"HandlerGoexit", s.testHandlerGoexit},
		{"HandlerPublishesToOwnTopic", s.testHandlerPublishesToOwnTopic},
		{"SameEventTwoTopics", s.testSameEventTwoTopics},
		{"MiddlewareDeadLetter", s.testDeadLetter},
		{"MiddlewareDeadLetterNearLimit", s.testDeadLetterNearLimit},
		{"MiddlewareIdempotent", s.testIdempotent},
		{"MiddlewareRetryInPlace", s.testRetryInPlace},
		{"MiddlewareLimitSharedByPublishingHandlers", s.testLimitSharedByPublishingHandlers},
	} {
		t.Run(c.name, c.fn)
	}
}

var (
	runID   = strconv.FormatInt(time.Now().UnixNano(), 36) + strconv.FormatInt(int64(os.Getpid()), 36)
	nameSeq atomic.Int64
)

// UniqueTopic returns a topic name unique in this process and run (valid for
// every transport: ASCII letters, digits and '-'), for transports' own tests.
func UniqueTopic(t testing.TB) string { return uniqueName(t, "t") }

// UniqueGroup returns a group name unique in this process and run, valid for
// every transport.
func UniqueGroup(t testing.TB) string { return uniqueName(t, "g") }

func uniqueName(t testing.TB, kind string) string {
	base := []byte(t.Name())
	for i, c := range base {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			base[i] = '-'
		}
	}
	if len(base) > 48 {
		base = base[len(base)-48:]
	}
	return fmt.Sprintf("bw%s-%s-%s-%d", kind, strings.Trim(string(base), "-"), runID, nameSeq.Add(1))
}

// open opens a transport and closes it when the test ends.
func (s *suite) open(t *testing.T) transport.Transport {
	t.Helper()
	tr := s.h.Open(t)
	if tr == nil {
		t.Fatal("Harness.Open returned nil")
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Transport.Close: %v", err)
		}
	})
	return tr
}

// ctx returns a context bounded by the suite's timeout.
func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), s.timeout)
	t.Cleanup(cancel)
	return ctx
}

// trySubscribe subscribes and closes the subscription when the test ends. Safe
// to call from any goroutine.
func (s *suite) trySubscribe(t *testing.T, tr transport.Transport, topic string, h transport.Handler, o transport.SubscribeOptions) (transport.Subscription, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	sub, err := tr.Subscribe(ctx, topic, h, o)
	if err != nil {
		return nil, fmt.Errorf("Subscribe(%q, group %q): %w", topic, o.Group, err)
	}
	if sub == nil {
		return nil, fmt.Errorf("Subscribe(%q, group %q) returned a nil Subscription and no error", topic, o.Group)
	}
	t.Cleanup(func() { s.closeSub(t, sub) })
	return sub, nil
}

func (s *suite) subscribe(t *testing.T, tr transport.Transport, topic string, h transport.Handler, o transport.SubscribeOptions) transport.Subscription {
	t.Helper()
	sub, err := s.trySubscribe(t, tr, topic, h, o)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

func (s *suite) closeSub(t *testing.T, sub transport.Subscription) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	// ErrClosed is fine: the test may have closed the transport already.
	if err := sub.Close(ctx); err != nil && !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscription.Close: %v", err)
	}
}

// publish publishes msgs in batches of batch (all at once when batch < 1).
func (s *suite) publish(t *testing.T, tr transport.Transport, topic string, msgs []*transport.Message, batch int) {
	t.Helper()
	if err := s.tryPublish(tr, topic, msgs, batch); err != nil {
		t.Fatal(err)
	}
}

func (s *suite) tryPublish(tr transport.Transport, topic string, msgs []*transport.Message, batch int) error {
	if batch < 1 {
		batch = len(msgs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	for len(msgs) > 0 {
		n := min(batch, len(msgs))
		if err := tr.Publish(ctx, topic, msgs[:n]...); err != nil {
			return fmt.Errorf("Publish(%q, %d messages): %w", topic, n, err)
		}
		msgs = msgs[n:]
	}
	return nil
}

// waitFor polls cond until it reports true or the timeout passes; state
// describes what was seen, for the failure message.
func (s *suite) waitFor(t *testing.T, what string, cond func() (ok bool, state string)) {
	t.Helper()
	if err := s.tryWaitFor(what, cond); err != nil {
		t.Fatal(err)
	}
}

func (s *suite) tryWaitFor(what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(s.timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s (%s)", s.timeout, what, state)
		}
		<-tick.C
	}
}

// makeMsgs returns n messages with IDs prefix-0 ... prefix-(n-1), the key
// key(i) (nil: no key), a header "seq" and a small body.
func makeMsgs(prefix string, n int, key func(i int) string) []*transport.Message {
	msgs := make([]*transport.Message, n)
	for i := range msgs {
		m := &transport.Message{
			ID:     fmt.Sprintf("%s-%d", prefix, i),
			Header: map[string]string{"seq": strconv.Itoa(i)},
			Body:   []byte(fmt.Sprintf("body %s %d", prefix, i)),
		}
		if key != nil {
			m.Key = key(i)
		}
		msgs[i] = m
	}
	return msgs
}

func ids(msgs []*transport.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

// recorder records deliveries: the first delivery of each ID (a clone) and
// how often each ID was delivered.
type recorder struct {
	mu    sync.Mutex
	first map[string]*transport.Message
	count map[string]int
	total int
}

func newRecorder() *recorder {
	return &recorder{first: map[string]*transport.Message{}, count: map[string]int{}}
}

func (r *recorder) add(m *transport.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.first[m.ID]; !ok {
		r.first[m.ID] = m.Clone()
	}
	r.count[m.ID]++
	r.total++
}

// handle is a Handler that records and acknowledges.
func (r *recorder) handle(_ context.Context, m *transport.Message) error {
	r.add(m)
	return nil
}

func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.first)
}

func (r *recorder) get(id string) (*transport.Message, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first[id], r.count[id]
}

func (r *recorder) has(id string) bool {
	_, n := r.get(id)
	return n > 0
}

// hasAll reports whether every id was delivered, for waitFor.
func (r *recorder) hasAll(want []string) func() (bool, string) {
	return func() (bool, string) {
		r.mu.Lock()
		defer r.mu.Unlock()
		missing := 0
		first := ""
		for _, id := range want {
			if _, ok := r.first[id]; !ok {
				if missing == 0 {
					first = id
				}
				missing++
			}
		}
		if missing == 0 {
			return true, ""
		}
		return false, fmt.Sprintf("%d of %d delivered; %d missing, e.g. %q", len(want)-missing, len(want), missing, first)
	}
}

// ids returns the distinct delivered IDs.
func (r *recorder) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.first))
	for id := range r.first {
		out = append(out, id)
	}
	return out
}

// maxGauge tracks a running count and its peak.
type maxGauge struct {
	cur, peak atomic.Int64
}

func (g *maxGauge) inc() int64 {
	n := g.cur.Add(1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			return n
		}
	}
}

func (g *maxGauge) dec() { g.cur.Add(-1) }

// OpenerHarness tells CheckOpener how to reach a transport's opener.
type OpenerHarness struct {
	// Opener is the opener under test (the transport's URLOpener).
	Opener transport.Opener
	// Scheme is the transport's URL scheme.
	Scheme string
	// Host is a valid host part of the transport's URLs ("127.0.0.1:4222"),
	// or "" when its URLs take none ("chan://").
	Host string
	// Bad are more malformed URLs, specific to the transport, each with
	// the Part its *transport.URLError must name (a substring).
	Bad []BadURL
}

// BadURL is a malformed URL and the part its error must name.
type BadURL struct {
	URL  string
	Part string
}

// CheckOpener checks that an opener rejects malformed URLs the way every
// busway opener does: without connecting anywhere, with a
// *transport.URLError that wraps transport.ErrInvalidURL, names the
// offending part (Part) and shows no password. Each transport's opener test
// calls it. The URLs it tries: another scheme; an opaque URL; a missing
// host (or, for URLs that take none, a host); a path; an unknown query
// option; an option given twice; a password next to a bad part; and
// h.Bad.
func CheckOpener(t *testing.T, h OpenerHarness) {
	t.Helper()
	if h.Opener == nil || h.Scheme == "" {
		t.Fatal("transporttest: OpenerHarness needs Opener and Scheme")
	}
	base := h.Scheme + "://" + h.Host
	cases := []BadURL{
		{"other" + h.Scheme + "://" + h.Host, "scheme"},
		{h.Scheme + ":opaque", ""}, // "url", or "host" where hosts are required
		{base + "/some/path", "path"},
		{base + "?no_such_option=1", `"no_such_option"`},
		{base + "?no_such_option=1&no_such_option=2", `"no_such_option"`},
		{h.Scheme + "://user:s3cretpw@" + h.Host + "/some/path", ""},
	}
	if h.Host == "" {
		cases = append(cases, BadURL{h.Scheme + "://somehost", "host"})
	} else {
		cases = append(cases, BadURL{h.Scheme + "://", "host"}, BadURL{h.Scheme + ":///", "host"})
	}
	cases = append(cases, h.Bad...)
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	for _, c := range cases {
		u, err := url.Parse(c.URL)
		if err != nil {
			t.Errorf("transporttest: %q does not parse: %v", c.URL, err)
			continue
		}
		tr, err := h.Opener.OpenTransport(ctx, u)
		if err == nil {
			t.Errorf("OpenTransport(%q): no error", c.URL)
			if tr != nil {
				_ = tr.Close()
			}
			continue
		}
		var ue *transport.URLError
		switch {
		case !errors.As(err, &ue):
			t.Errorf("OpenTransport(%q) = %v: not a *transport.URLError", c.URL, err)
		case !errors.Is(err, transport.ErrInvalidURL):
			t.Errorf("OpenTransport(%q) = %v: does not wrap ErrInvalidURL", c.URL, err)
		case ue.Part == "":
			t.Errorf("OpenTransport(%q) = %v: names no part", c.URL, err)
		case c.Part != "" && !strings.Contains(ue.Part, c.Part):
			t.Errorf("OpenTransport(%q) = %v: about %s, want %s", c.URL, err, ue.Part, c.Part)
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("OpenTransport(%q): the error shows the password: %v", c.URL, err)
		}
		if tr != nil {
			t.Errorf("OpenTransport(%q) returned a transport with its error", c.URL)
		}
	}
}
