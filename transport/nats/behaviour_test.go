package nats_test

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

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
	"github.com/busway/busway/transport/transporttest"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func streamMsgs(t testing.TB, tr *busnats.Transport) uint64 {
	t.Helper()
	st, err := tr.JetStream().Stream(ctxT(t), tr.Stream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestDuplicateIDConsumedOnce: the same ID published twice within the
// duplicate window is stored and consumed once, single and in a batch.
func TestDuplicateIDConsumedOnce(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	topic := transporttest.UniqueTopic(t)
	col := newCollector()
	subscribe(t, tr, topic, col.handle, transport.SubscribeOptions{Group: "g", StartFrom: transport.StartEarliest})
	ctx := ctxT(t)
	dup := func() *transport.Message { return &transport.Message{ID: "dup-1", Key: "k", Body: []byte("same")} }
	for range 2 {
		if err := tr.Publish(ctx, topic, dup()); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Publish(ctx, topic, dup(), &transport.Message{ID: "b-1"}, dup(), &transport.Message{ID: "last", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the last message", func() bool { return col.get("last") > 0 })
	time.Sleep(100 * time.Millisecond) // a late duplicate would show now
	if n := col.get("dup-1"); n != 1 {
		t.Fatalf("dup-1 consumed %d times, want 1", n)
	}
	if n := streamMsgs(t, tr); n != 3 {
		t.Fatalf("stream holds %d messages, want 3 (dup-1, b-1, last)", n)
	}
}

func TestUnreachableServer(t *testing.T) {
	start := time.Now()
	_, err := busnats.New(ctxT(t), busnats.Config{Servers: []string{"nats://127.0.0.1:1"}, ConnectTimeout: 200 * time.Millisecond})
	if !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("New = %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("error %q does not name the server", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
	t.Log(err)
}

func TestWrongCredentials(t *testing.T) {
	srv := startServer(t, &server.Options{Username: "app", Password: "right"})
	defer stop(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))
	for _, c := range []struct {
		name       string
		user, pass string
	}{{"wrong password", "app", "wrong"}, {"none", "", ""}} {
		t.Run(c.name, func(t *testing.T) {
			_, err := busnats.New(ctxT(t), busnats.Config{Servers: []string{url}, User: c.user, Password: c.pass})
			if !errors.Is(err, transport.ErrAuthentication) {
				t.Fatalf("New = %v, want ErrAuthentication", err)
			}
			if strings.Contains(err.Error(), "wrong") {
				t.Errorf("error %q shows the password", err)
			}
			t.Log(err)
		})
	}
	tr := open(t, busnats.Config{Servers: []string{url}, User: "app", Password: "right", Storage: busnats.StorageMemory})
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBindMode(t *testing.T) {
	srv := startServer(t, &server.Options{})
	defer stop(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))
	_, err := busnats.New(ctxT(t), busnats.Config{Servers: []string{url}, Stream: "MISSING", Provision: busnats.ProvisionBind})
	if !errors.Is(err, transport.ErrTopicNotFound) || !strings.Contains(err.Error(), `"MISSING"`) {
		t.Fatalf("New in bind mode without the stream = %v, want ErrTopicNotFound naming MISSING", err)
	}
	t.Log(err)

	// An operator's stream that does not hold the prefix's subjects.
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "OPS", Subjects: []string{"other.>"}}); err != nil {
		t.Fatal(err)
	}
	_, err = busnats.New(ctxT(t), busnats.Config{Servers: []string{url}, Stream: "OPS", Provision: busnats.ProvisionBind})
	if !errors.Is(err, transport.ErrTopicNotFound) || !strings.Contains(err.Error(), "busway.>") {
		t.Fatalf("New binding a stream without busway.> = %v, want ErrTopicNotFound naming the subject", err)
	}
	t.Log(err)

	// With the subjects, bind works and leaves the stream as it is.
	if _, err := js.UpdateStream(ctxT(t), jetstream.StreamConfig{Name: "OPS", Subjects: []string{"other.>", "busway.>"}, MaxMsgs: 1000}); err != nil {
		t.Fatal(err)
	}
	tr := open(t, busnats.Config{Servers: []string{url}, Stream: "OPS", Provision: busnats.ProvisionBind})
	defer tr.Close()
	col := newCollector()
	subscribe(t, tr, "orders", col.handle, transport.SubscribeOptions{Group: "g"})
	if err := tr.Publish(ctxT(t), "orders", &transport.Message{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "delivery on the bound stream", func() bool { return col.get("1") == 1 })
	st, _ := js.Stream(ctxT(t), "OPS")
	if cfg := st.CachedInfo().Config; cfg.MaxMsgs != 1000 || len(cfg.Subjects) != 2 {
		t.Fatalf("bind changed the stream: %+v", cfg)
	}
}

func TestCreateModeAddsSubjects(t *testing.T) {
	srv := startServer(t, &server.Options{})
	defer stop(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))
	a := open(t, busnats.Config{Servers: []string{url}, SubjectPrefix: "app-a"})
	defer a.Close()
	b := open(t, busnats.Config{Servers: []string{url}, SubjectPrefix: "app-b"})
	defer b.Close()
	st, err := b.JetStream().Stream(ctxT(t), busnats.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.Subjects; len(got) != 2 {
		t.Fatalf("stream subjects %q, want app-a.> and app-b.>", got)
	}
}

func TestIllegalNames(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	ctx := ctxT(t)
	for _, topic := range []string{"", "a b", "a.*", "a.>", ">", "a\tb", "a..b", ".a", "ä"} {
		if err := tr.Publish(ctx, topic, &transport.Message{ID: "x"}); !errors.Is(err, transport.ErrInvalidTopic) {
			t.Errorf("Publish to %q = %v, want ErrInvalidTopic", topic, err)
		}
		_, err := tr.Subscribe(ctx, topic, func(context.Context, *transport.Message) error { return nil }, transport.SubscribeOptions{Group: "g"})
		if !errors.Is(err, transport.ErrInvalidTopic) {
			t.Errorf("Subscribe to %q = %v, want ErrInvalidTopic", topic, err)
		}
	}
	for _, h := range []map[string]string{{"a b": "x"}, {"a:b": "x"}, {"": "x"}, {"a/b": "x"}, {"ä": "x"}} {
		if err := tr.Publish(ctx, "ok", &transport.Message{ID: "x", Header: h}); !errors.Is(err, transport.ErrInvalidMessage) {
			t.Errorf("Publish with header %q = %v, want ErrInvalidMessage", h, err)
		}
	}
	if n := streamMsgs(t, tr); n != 0 {
		t.Fatalf("%d messages stored from bad input", n)
	}
	for _, cfg := range []busnats.Config{
		{SubjectPrefix: "a b"}, {SubjectPrefix: "a.*"}, {SubjectPrefix: "a.>"}, {SubjectPrefix: "a..b"},
		{Stream: "a.b"}, {Stream: "a b"}, {Stream: "a*"},
	} {
		cfg.Embedded = &busnats.EmbeddedConfig{StoreDir: t.TempDir()}
		if _, err := busnats.New(ctx, cfg); !errors.Is(err, transport.ErrInvalidOptions) {
			t.Errorf("New(%+v) = %v, want ErrInvalidOptions", cfg, err)
		} else {
			t.Log(err)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		cfg  busnats.Config
	}{
		{"servers and embedded", busnats.Config{Servers: []string{"nats://x"}, Embedded: &busnats.EmbeddedConfig{StoreDir: dir}}},
		{"embedded without store dir", busnats.Config{Embedded: &busnats.EmbeddedConfig{}}},
		{"negative ack wait", busnats.Config{AckWait: -1}},
		{"max deliver -2", busnats.Config{MaxDeliver: -2}},
		{"backoff longer than max deliver", busnats.Config{MaxDeliver: 2, BackOff: []time.Duration{time.Second, time.Second}}},
		{"replicas 7", busnats.Config{Replicas: 7}},
		{"password without user", busnats.Config{Password: "x"}},
		{"bad provision", busnats.Config{Provision: 9}},
		{"bad storage", busnats.Config{Storage: 9}},
		{"negative nak delay", busnats.Config{NakDelays: []time.Duration{-1}}},
		{"duplicates beyond max age", busnats.Config{MaxAge: time.Second, Duplicates: time.Minute}},
		{"bad embedded port", busnats.Config{Embedded: &busnats.EmbeddedConfig{StoreDir: dir, Port: 70000}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := busnats.New(ctxT(t), c.cfg)
			if !errors.Is(err, transport.ErrInvalidOptions) {
				t.Fatalf("New = %v, want ErrInvalidOptions", err)
			}
			t.Log(err)
		})
	}
}

func TestSpecificOptions(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	ctx := ctxT(t)
	h := func(context.Context, *transport.Message) error { return nil }
	for _, c := range []struct {
		name string
		opt  transport.SpecificOption
	}{
		{"zero AckWait", busnats.AckWait(0)},
		{"MaxDeliver 0", busnats.MaxDeliver(0)},
		{"empty NakDelays", busnats.NakDelays()},
		{"MaxAckPending 0", busnats.MaxAckPending(0)},
		{"Durable with dot", busnats.Durable("a.b")},
		{"zero InactiveThreshold", busnats.InactiveThreshold(0)},
		{"zero value option", busnats.SubscribeOption{}},
	} {
		_, err := tr.Subscribe(ctx, "t", h, transport.SubscribeOptions{Group: "g", Specific: []transport.SpecificOption{c.opt}})
		if !errors.Is(err, transport.ErrInvalidOptions) {
			t.Errorf("%s: Subscribe = %v, want ErrInvalidOptions", c.name, err)
		}
	}
	// Options of other transports are ignored.
	sub := subscribe(t, tr, "t", h, transport.SubscribeOptions{Group: "g", Specific: []transport.SpecificOption{otherOpt{}, nil,
		busnats.AckWait(time.Second), busnats.MaxDeliver(10), busnats.NakDelays(time.Millisecond), busnats.MaxAckPending(7), busnats.Durable("custom-name")}})
	_ = sub
	cons, err := tr.JetStream().Consumer(ctx, tr.Stream(), "custom-name")
	if err != nil {
		t.Fatal(err)
	}
	cfg := cons.CachedInfo().Config
	if cfg.AckWait != time.Second || cfg.MaxDeliver != 10 || cfg.MaxAckPending != 7 || cfg.FilterSubject != "busway.t" {
		t.Fatalf("consumer config %+v", cfg)
	}
}

type otherOpt struct{}

func (otherOpt) Transport() string { return "kafka" }

// TestOversize: a message over the server's max payload fails alone with
// ErrMessageTooLarge before it is sent; the others of the call are stored.
func TestOversize(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.Embedded.MaxPayload = 64 << 10
	tr := open(t, cfg)
	defer tr.Close()
	ctx := ctxT(t)
	big := &transport.Message{ID: "big", Body: make([]byte, 64<<10)}
	if err := tr.Publish(ctx, "t", big); !errors.Is(err, transport.ErrMessageTooLarge) {
		t.Fatalf("Publish = %v, want ErrMessageTooLarge", err)
	}
	err := tr.Publish(ctx, "t", &transport.Message{ID: "small"}, big, &transport.Message{ID: "small2"})
	if !errors.Is(err, transport.ErrMessageTooLarge) || !strings.Contains(err.Error(), `"big"`) {
		t.Fatalf("Publish batch = %v, want ErrMessageTooLarge naming big", err)
	}
	t.Log(err)
	if n := streamMsgs(t, tr); n != 2 {
		t.Fatalf("%d messages stored; want small and small2", n)
	}
	// Just under the limit with its headers: accepted.
	ok := &transport.Message{ID: "fits", Body: make([]byte, 64<<10-200)}
	if err := tr.Publish(ctx, "t", ok); err != nil {
		t.Fatalf("Publish just under the limit: %v", err)
	}
}

// TestBatchPartialFailure: a stream limit rejects some messages of a batch;
// the PublishError names exactly those, and the others are stored.
func TestBatchPartialFailure(t *testing.T) {
	srv := startServer(t, &server.Options{})
	defer stop(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: "SMALL", Subjects: []string{"busway.>"}, MaxMsgSize: 200}); err != nil {
		t.Fatal(err)
	}
	tr := open(t, busnats.Config{Servers: []string{url}, Stream: "SMALL", Provision: busnats.ProvisionBind})
	defer tr.Close()
	msgs := []*transport.Message{{ID: "a"}, {ID: "b", Body: make([]byte, 500)}, {ID: "c"}, {ID: "d", Body: make([]byte, 500)}}
	err = tr.Publish(ctxT(t), "t", msgs...)
	var pe *transport.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish = %v, want a *PublishError", err)
	}
	if len(pe.Failures) != 2 || pe.Failures[0].ID != "b" || pe.Failures[1].ID != "d" || pe.Total != 4 {
		t.Fatalf("failures %+v, want b and d of 4", pe.Failures)
	}
	if !errors.Is(err, transport.ErrMessageTooLarge) {
		t.Errorf("error %v does not wrap ErrMessageTooLarge", err)
	}
	t.Log(err)
	if n := streamMsgs(t, tr); n != 2 {
		t.Fatalf("stream holds %d, want 2", n)
	}
}

// TestWireHeaders: CloudEvents attributes travel as "ce-" headers, Key as
// ce-partitionkey, ID as Nats-Msg-Id; a foreign client's ce- headers arrive
// in the canonical spelling.
func TestWireHeaders(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	ctx := ctxT(t)
	raw, err := tr.Conn().SubscribeSync(tr.Subject("ev"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Unsubscribe()
	col := make(chan *transport.Message, 2)
	subscribe(t, tr, "ev", func(_ context.Context, m *transport.Message) error { col <- m.Clone(); return nil }, transport.SubscribeOptions{Group: "g"})
	if err := tr.Publish(ctx, "ev", &transport.Message{ID: "id-1", Key: "order-7", Body: []byte("{}"),
		Header: map[string]string{transport.HeaderType: "order.created", transport.HeaderContentType: "application/json", "x-app": "1"}}); err != nil {
		t.Fatal(err)
	}
	wm, err := raw.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Nats-Msg-Id": tr.Subject("ev") + "/id-1", "ce-partitionkey": "order-7", "ce-type": "order.created", "content-type": "application/json", "x-app": "1"}
	for k, v := range want {
		if got := wm.Header.Get(k); got != v {
			t.Errorf("wire header %q = %q, want %q (all: %v)", k, got, v, wm.Header)
		}
	}
	if len(wm.Header) != len(want) {
		t.Errorf("wire headers %v, want exactly %v", wm.Header, want)
	}
	got := <-col
	if got.ID != "id-1" || got.Key != "order-7" || got.Header[transport.HeaderType] != "order.created" || got.Header[transport.HeaderPartitionKey] != "order-7" {
		t.Fatalf("delivered %+v", got)
	}
	if got.Meta[transport.MetaSequence] != "1" || got.Attempt != 1 || got.Group != "g" || got.Topic != "ev" {
		t.Fatalf("delivery fields %+v", got)
	}

	// A foreign CloudEvents publisher.
	fm := natsgo.NewMsg(tr.Subject("ev"))
	fm.Header.Set("ce-id", "foreign-1")
	fm.Header.Set("ce-specversion", "1.0")
	fm.Data = []byte("x")
	if _, err := tr.JetStream().PublishMsg(ctx, fm); err != nil {
		t.Fatal(err)
	}
	got = <-col
	if got.ID != "foreign-1" || got.Header[transport.HeaderID] != "foreign-1" || got.Header[transport.HeaderSpecVersion] != "1.0" || got.Key != "" {
		t.Fatalf("foreign message delivered as %+v", got)
	}
}

// TestLongHandlerNotRedelivered: a handler running past AckWait reports
// progress, so its message is not redelivered meanwhile.
func TestLongHandlerNotRedelivered(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	var calls atomic.Int32
	done := make(chan struct{})
	subscribe(t, tr, "slow", func(ctx context.Context, m *transport.Message) error {
		if calls.Add(1) == 1 {
			time.Sleep(2500 * time.Millisecond)
			close(done)
		}
		return nil
	}, transport.SubscribeOptions{Group: "g", Specific: []transport.SpecificOption{busnats.AckWait(time.Second)}})
	if err := tr.Publish(ctxT(t), "slow", &transport.Message{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	<-done
	time.Sleep(time.Second)
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times, want 1", n)
	}
}

// TestNakRedelivery: a failing handler's message comes back with a higher
// Attempt after the Nak delay.
func TestNakRedelivery(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	var mu sync.Mutex
	var attempts []int
	subscribe(t, tr, "fail", func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, m.Attempt)
		if len(attempts) < 3 {
			return errors.New("boom")
		}
		return nil
	}, transport.SubscribeOptions{Group: "g", Specific: []transport.SpecificOption{busnats.NakDelays(10*time.Millisecond, 50*time.Millisecond)}})
	if err := tr.Publish(ctxT(t), "fail", &transport.Message{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "3 attempts", func() bool { mu.Lock(); defer mu.Unlock(); return len(attempts) >= 3 })
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[1 2 3]" {
		t.Fatalf("attempts %v, want [1 2 3]", attempts)
	}
}

// TestBoundedInFlight: with a blocked handler the server hands out at most
// MaxAckPending messages.
func TestBoundedInFlight(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	release := make(chan struct{})
	var seen atomic.Int32
	subscribe(t, tr, "bp", func(ctx context.Context, m *transport.Message) error {
		seen.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}, transport.SubscribeOptions{Group: "g", Concurrency: 2, Specific: []transport.SpecificOption{busnats.MaxAckPending(10)}})
	msgs := make([]*transport.Message, 200)
	for i := range msgs {
		msgs[i] = &transport.Message{ID: fmt.Sprint(i), Key: fmt.Sprint(i % 7)}
	}
	if err := tr.Publish(ctxT(t), "bp", msgs...); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "handlers to start", func() bool { return seen.Load() >= 1 })
	time.Sleep(200 * time.Millisecond)
	st, err := tr.JetStream().Stream(ctxT(t), tr.Stream())
	if err != nil {
		t.Fatal(err)
	}
	names := st.ConsumerNames(ctxT(t))
	n := 0
	for name := range names.Name() {
		n++
		c, err := st.Consumer(ctxT(t), name)
		if err != nil {
			t.Fatal(err)
		}
		info := c.CachedInfo()
		if info.NumAckPending > 10 {
			t.Fatalf("%d messages pending ack, MaxAckPending 10", info.NumAckPending)
		}
		t.Logf("consumer %s: %d pending ack, %d not yet delivered", name, info.NumAckPending, info.NumPending)
	}
	if n != 1 {
		t.Fatalf("%d consumers, want 1", n)
	}
	close(release)
}

// TestHeldBound: a subscription never has more than MaxHeld messages
// delivered and not finished, though it asks for more before the server
// answered its last request. Its handler stops now and then; once the
// server answered every request (NumWaiting 0), delivered minus handled is
// what the subscription holds or has on its way, at most MaxHeld.
func TestHeldBound(t *testing.T) {
	const maxHeld, total, every = 8, 400, 50
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	topic := transporttest.UniqueTopic(t)
	var handled atomic.Int64
	blocked := make(chan int)
	release := make(chan struct{})
	failed := make(chan struct{}) // the test ends: stop no more
	subscribe(t, tr, topic, func(ctx context.Context, m *transport.Message) error {
		n := int(handled.Load())
		if n%every == every-1 && n < total-every {
			select {
			case blocked <- n:
			case <-failed:
			case <-ctx.Done():
			}
			select {
			case <-release:
			case <-failed:
			case <-ctx.Done():
			}
		}
		handled.Add(1)
		return nil
	}, transport.SubscribeOptions{Group: "g", StartFrom: transport.StartEarliest,
		Specific: []transport.SpecificOption{busnats.MaxHeld(maxHeld), busnats.MaxAckPending(1000)}})
	t.Cleanup(func() { close(failed) }) // before the subscription's Close
	msgs := make([]*transport.Message, total)
	for i := range msgs {
		msgs[i] = &transport.Message{ID: fmt.Sprint(i)}
	}
	if err := tr.Publish(ctxT(t), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	st, err := tr.JetStream().Stream(ctxT(t), tr.Stream())
	if err != nil {
		t.Fatal(err)
	}
	stops := 0
	for stops < total/every-1 {
		var n int
		select {
		case n = <-blocked:
		case <-time.After(10 * time.Second):
			t.Fatalf("handler did not reach its stop %d (%d handled)", stops, handled.Load())
		}
		stops++
		var info *jetstream.ConsumerInfo
		waitUntil(t, 10*time.Second, "the server to answer every pull request", func() bool {
			names := st.ConsumerNames(ctxT(t))
			for name := range names.Name() {
				c, err := st.Consumer(ctxT(t), name)
				if err != nil {
					t.Fatal(err)
				}
				info = c.CachedInfo()
			}
			return info != nil && info.NumWaiting == 0
		})
		if held := int(info.Delivered.Consumer) - n; held > maxHeld || held < 1 {
			t.Fatalf("stopped at message %d: %d delivered, %d held, MaxHeld %d", n, info.Delivered.Consumer, held, maxHeld)
		}
		release <- struct{}{}
	}
	waitUntil(t, 10*time.Second, "every message handled", func() bool { return handled.Load() == total })
}

// TestSlowKeyBlocksOnlyItself: with Concurrency 2, a handler blocked on one
// key delays only that key's later messages, not those of other keys; the
// keys "slow", "a" and "c" once shared a worker (fnv32a(key)%2 == 0), so
// one blocked message stalled all three.
func TestSlowKeyBlocksOnlyItself(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	topic := transporttest.UniqueTopic(t)
	release := make(chan struct{})
	started := make(chan struct{})
	var mu sync.Mutex
	var order []string
	subscribe(t, tr, topic, func(ctx context.Context, m *transport.Message) error {
		if m.ID == "slow-1" {
			close(started)
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		mu.Lock()
		defer mu.Unlock()
		order = append(order, m.ID)
		return nil
	}, transport.SubscribeOptions{Group: "g", Concurrency: 2})
	ctx := ctxT(t)
	if err := tr.Publish(ctx, topic, &transport.Message{ID: "slow-1", Key: "slow"}); err != nil {
		t.Fatal(err)
	}
	<-started
	msgs := []*transport.Message{{ID: "slow-2", Key: "slow"}}
	for i := 1; i <= 3; i++ {
		msgs = append(msgs, &transport.Message{ID: fmt.Sprint("a-", i), Key: "a"}, &transport.Message{ID: fmt.Sprint("c-", i), Key: "c"})
	}
	if err := tr.Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	got := func() string { mu.Lock(); defer mu.Unlock(); return strings.Join(order, " ") }
	waitUntil(t, 10*time.Second, "keys a and c while slow-1 blocks", func() bool { return strings.Count(got(), "-") == 6 })
	// Each key in its order; slow-2 waits behind slow-1.
	for _, k := range []string{"a", "c"} {
		var ids []string
		for _, id := range strings.Fields(got()) {
			if strings.HasPrefix(id, k+"-") {
				ids = append(ids, id)
			}
		}
		if want := k + "-1 " + k + "-2 " + k + "-3"; strings.Join(ids, " ") != want {
			t.Fatalf("key %s handled as %v, want %s (all: %s)", k, ids, want, got())
		}
	}
	close(release)
	waitUntil(t, 10*time.Second, "slow-1 and slow-2", func() bool { return strings.HasSuffix(got(), "slow-1 slow-2") })
}

// TestOpener covers the URL forms and their errors.
func TestOpener(t *testing.T) {
	dir := t.TempDir()
	var mux transport.Mux
	if err := mux.Register(busnats.Scheme, busnats.Opener()); err != nil {
		t.Fatal(err)
	}
	tr, err := mux.Open(ctxT(t), "nats://embedded?store_dir="+url.QueryEscape(dir)+"&stream=APP&prefix=app.events&ack_wait=10s&nak_delay=10ms,1s")
	if err != nil {
		t.Fatal(err)
	}
	nt := tr.(*busnats.Transport)
	if nt.Stream() != "APP" || nt.Subject("x") != "app.events.x" || nt.EmbeddedURL() == "" {
		t.Fatalf("opened %s %s %q", nt.Stream(), nt.Subject("x"), nt.EmbeddedURL())
	}
	col := newCollector()
	sub, err := tr.Subscribe(ctxT(t), "x", col.handle, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctxT(t), "x", &transport.Message{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "delivery", func() bool { return col.get("1") == 1 })
	_ = sub
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	for _, c := range []struct {
		url, part string
		want      error
	}{
		{"nats://embedded", "store_dir", transport.ErrInvalidURL},
		{"nats://embedded?store_dir=/x&bogus=1", "bogus", transport.ErrInvalidURL},
		{"nats://127.0.0.1:4222?ack_wait=soon", "ack_wait", transport.ErrInvalidURL},
		{"nats://127.0.0.1:99999", "host", transport.ErrInvalidURL},
		{"nats://:4222", "host", transport.ErrInvalidURL},
		{"nats://a:1,:2", "host", transport.ErrInvalidURL},
		{"nats://h/path", "path", transport.ErrInvalidURL},
		{"nats://h?provision=maybe", "provision", transport.ErrInvalidURL},
		{"nats://h?storage=tape", "storage", transport.ErrInvalidURL},
		{"nats://h?nak_delay=1s,x", "nak_delay", transport.ErrInvalidURL},
		{"nats://h?prefix=a*b", "options", transport.ErrInvalidOptions},
		{"nats://h?tls_cert=/nonexistent", "tls_cert", transport.ErrInvalidURL},
		{"nats://u:secret@h?stream=a.b", "options", transport.ErrInvalidOptions},
	} {
		_, err := mux.Open(ctxT(t), c.url)
		var ue *transport.URLError
		if !errors.As(err, &ue) || !errors.Is(err, c.want) || !strings.Contains(ue.Part, c.part) {
			t.Errorf("Open(%q) = %v, want a URLError about %s wrapping %v", c.url, err, c.part, c.want)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q): error shows the password: %v", c.url, err)
		}
		t.Log(err)
	}

	cfg, err := busnats.ConfigFromURL(mustURL(t, "nats://u:p@h1:1,h2:4222?stream=S&provision=bind&storage=memory&replicas=3&max_age=1h&duplicates=1m&max_deliver=5&max_ack_pending=9&creds=/c&name=n&connect_timeout=1s&publish_timeout=3s"))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(cfg.Servers) != "[nats://h1:1 nats://h2:4222]" || cfg.User != "u" || cfg.Password != "p" || cfg.Stream != "S" ||
		cfg.Provision != busnats.ProvisionBind || cfg.Storage != busnats.StorageMemory || cfg.Replicas != 3 || cfg.MaxAge != time.Hour ||
		cfg.Duplicates != time.Minute || cfg.MaxDeliver != 5 || cfg.MaxAckPending != 9 || cfg.CredsFile != "/c" || cfg.Name != "n" ||
		cfg.ConnectTimeout != time.Second || cfg.PublishTimeout != 3*time.Second {
		t.Fatalf("config %+v", cfg)
	}
	cfg, err = busnats.ConfigFromURL(mustURL(t, "nats://s3cr3t@h:4222"))
	if err != nil || cfg.Token != "s3cr3t" || cfg.User != "" {
		t.Fatalf("token URL: %+v, %v", cfg, err)
	}
}

func mustURL(t testing.TB, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestOperationsAfterClose: ErrClosed, no panic.
func TestOperationsAfterClose(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := tr.Publish(ctx, "t", &transport.Message{ID: "1"}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish = %v", err)
	}
	if _, err := tr.Subscribe(ctx, "t", func(context.Context, *transport.Message) error { return nil }, transport.SubscribeOptions{Group: "g"}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscribe = %v", err)
	}
}

// TestConsumerRecreated: a consumer deleted under a running subscription is
// recreated from its ack floor; nothing published meanwhile is lost, and
// nothing acked before is delivered again.
func TestConsumerRecreated(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	ctx := ctxT(t)
	if err := tr.Publish(ctx, "rc", &transport.Message{ID: "before-subscribe"}); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	subscribe(t, tr, "rc", col.handle, transport.SubscribeOptions{Group: "g",
		Specific: []transport.SpecificOption{busnats.AckWait(600 * time.Millisecond), busnats.Durable("rc-consumer")}})
	if err := tr.Publish(ctx, "rc", &transport.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "a", func() bool { return col.get("a") == 1 })
	time.Sleep(400 * time.Millisecond) // the subscription sees the ack floor
	if err := tr.JetStream().DeleteConsumer(ctx, tr.Stream(), "rc-consumer"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, "rc", &transport.Message{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "b after the consumer was recreated", func() bool { return col.get("b") == 1 })
	// "a" was acked before the consumer went; it comes again only if the
	// subscription had not yet seen the new ack floor (at-least-once).
	if n, m := col.get("a"), col.get("before-subscribe"); n < 1 || m != 0 {
		t.Fatalf("a delivered %d times, before-subscribe %d times; want at least 1 and 0", n, m)
	} else if n > 1 {
		t.Logf("a delivered %d times", n)
	}
}

// TestLargeBatch: a batch beyond the client's cap on unacknowledged async
// publishes (4000) waits for acks instead of failing.
func TestLargeBatch(t *testing.T) {
	tr := open(t, embeddedConfig(t))
	defer tr.Close()
	msgs := make([]*transport.Message, 10000)
	for i := range msgs {
		msgs[i] = &transport.Message{ID: fmt.Sprint("big-batch-", i), Body: []byte("x")}
	}
	if err := tr.Publish(ctxT(t), "many", msgs...); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, tr); n != uint64(len(msgs)) {
		t.Fatalf("stream holds %d, want %d", n, len(msgs))
	}
}
