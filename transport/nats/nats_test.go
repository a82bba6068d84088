package nats_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/internal/fdcheck"
	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
	"github.com/busway/busway/transport/transporttest"
)

func TestMain(m *testing.M) {
	fdcheck.Main(m)
}

// realURL is the real server of CI (BUS_TEST_NATS_URL), or "".
func realURL() string { return os.Getenv("BUS_TEST_NATS_URL") }

// embeddedConfig is a transport config on a fresh embedded server. Its max
// payload is 2 MiB so that the suite's 1 MiB body fits with its headers.
func embeddedConfig(t testing.TB) busnats.Config {
	return busnats.Config{
		Embedded:  &busnats.EmbeddedConfig{StoreDir: t.TempDir(), NoListen: true, MaxPayload: 2 << 20},
		NakDelays: []time.Duration{20 * time.Millisecond},
		AckWait:   5 * time.Second,
	}
}

func open(t testing.TB, cfg busnats.Config) *busnats.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := busnats.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tr
}

func TestConformanceEmbedded(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		Open: func(t *testing.T) transport.Transport { return open(t, embeddedConfig(t)) },
		OpenDrain: func(t *testing.T, d time.Duration) transport.Transport {
			cfg := embeddedConfig(t)
			cfg.AckWait = d // the drain timeout of Transport.Close
			return open(t, cfg)
		},
		Caps: transporttest.Capabilities{Durable: true, CountsAttempts: true},
		// Generous for a 2-core machine shared with other test runs.
		Timeout: 30 * time.Second,
	})
}

// uniqueStream returns a stream name and subject prefix no other run uses.
func uniqueStream(t testing.TB) (stream, prefix string) {
	id := strings.NewReplacer("bwt-", "", ".", "_").Replace(transporttest.UniqueTopic(t))
	return "BW_" + id, "bwtest." + id
}

// deleteStream removes a stream a test created on the real server.
func deleteStream(t testing.TB, url, stream string) {
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Errorf("cleanup: connect: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("cleanup: delete stream %s: %v", stream, err)
	}
}

// realConfig is a config on the real server with its own stream, deleted
// when the test ends.
func realConfig(t testing.TB, url string) busnats.Config {
	stream, prefix := uniqueStream(t)
	t.Cleanup(func() { deleteStream(t, url, stream) })
	return busnats.Config{
		Servers:       []string{url},
		Stream:        stream,
		SubjectPrefix: prefix,
		Storage:       busnats.StorageMemory,
		Logger:        debugLogger(),
		NakDelays:     []time.Duration{20 * time.Millisecond},
		AckWait:       5 * time.Second,
	}
}

func TestConformanceRealServer(t *testing.T) {
	url := realURL()
	if url == "" {
		t.Skip("BUS_TEST_NATS_URL is not set (e.g. nats://127.0.0.1:4222, a nats-server with JetStream)")
	}
	// The server's max_payload (1 MiB by default) counts headers too, so
	// the suite's large round-trip body is sized a little below it.
	probe := open(t, realConfig(t, url))
	maxBody := int(probe.Conn().MaxPayload()) - 8<<10
	probe.Close()
	transporttest.Run(t, transporttest.Harness{
		Open: func(t *testing.T) transport.Transport { return open(t, realConfig(t, url)) },
		OpenDrain: func(t *testing.T, d time.Duration) transport.Transport {
			cfg := realConfig(t, url)
			cfg.AckWait = d // the drain timeout of Transport.Close
			return open(t, cfg)
		},
		Caps: transporttest.Capabilities{Durable: true, CountsAttempts: true, MaxBodyBytes: maxBody},
	})
}

// startServer starts a nats-server with JetStream owned by the test.
func startServer(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.JetStream = true
	opts.NoSigs = true
	opts.NoLog = true
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	if opts.StoreDir == "" {
		opts.StoreDir = t.TempDir()
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("test server not ready")
	}
	return s
}

func stop(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

// collector is a handler that records delivered IDs.
type collector struct {
	mu    sync.Mutex
	count map[string]int
	order []string
}

func newCollector() *collector { return &collector{count: map[string]int{}} }

func (c *collector) handle(_ context.Context, m *transport.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count[m.ID]++
	c.order = append(c.order, m.ID)
	return nil
}

func (c *collector) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count[id]
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func subscribe(t testing.TB, tr transport.Transport, topic string, h transport.Handler, o transport.SubscribeOptions) transport.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := tr.Subscribe(ctx, topic, h, o)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sub.Close(ctx); err != nil {
			t.Errorf("Subscription.Close: %v", err)
		}
	})
	return sub
}

// portOf returns the TCP port s listens on.
func portOf(s *server.Server) int {
	return s.Addr().(*net.TCPAddr).Port
}

// TestRestart: an embedded server restarts (same store dir, same port)
// while a publisher keeps publishing; every message whose Publish returned
// nil is consumed afterwards, and the subscription resumes by itself. No
// message first reaches a handler on a redelivery: what the server sent
// around its shutdown is handled then, not after AckWait (with one-shot
// Fetch requests, which drop what arrives after the request ended, 70-120
// messages per run of 3 restarts first came with Attempt 2).
// BUS_STRESS=N restarts N times.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, &server.Options{StoreDir: dir})
	port := portOf(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	tr := open(t, busnats.Config{Servers: []string{url}, NakDelays: []time.Duration{20 * time.Millisecond}, PublishTimeout: time.Second, Logger: debugLogger(),
		AckWait: time.Second})
	t.Cleanup(func() { _ = tr.Close() })

	topic := transporttest.UniqueTopic(t)
	col := newCollector()
	// first is each message's Attempt when a handler first got it: above 1
	// means the server had sent it before and it never reached a handler,
	// so it waited for AckWait.
	var firstMu sync.Mutex
	first := map[string]int{}
	subscribe(t, tr, topic, func(ctx context.Context, m *transport.Message) error {
		firstMu.Lock()
		if _, ok := first[m.ID]; !ok {
			first[m.ID] = m.Attempt
		}
		firstMu.Unlock()
		return col.handle(ctx, m)
	}, transport.SubscribeOptions{Group: "g", Concurrency: 4})

	var (
		mu    sync.Mutex
		acked []string
		fails int
	)
	stopPub := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			default:
			}
			msgs := make([]*transport.Message, 5)
			for j := range msgs {
				msgs[j] = &transport.Message{ID: fmt.Sprintf("m-%d-%d", i, j), Key: fmt.Sprintf("k%d", j), Body: []byte("x")}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := tr.Publish(ctx, topic, msgs...)
			cancel()
			mu.Lock()
			var pe *transport.PublishError
			switch {
			case err == nil:
				for _, m := range msgs {
					acked = append(acked, m.ID)
				}
			case errors.As(err, &pe):
				failed := map[int]bool{}
				for _, f := range pe.Failures {
					failed[f.Index] = true
				}
				for j, m := range msgs {
					if !failed[j] {
						acked = append(acked, m.ID)
					}
				}
				fails++
			default:
				fails++
			}
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	countAcked := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitUntil(t, 10*time.Second, "publishes before the restart", func() bool { return countAcked() >= 100 })
	// BUS_STRESS=N restarts the server N times.
	restarts := 1
	if n, err := strconv.Atoi(os.Getenv("BUS_STRESS")); err == nil && n > 1 {
		restarts = n
	}
	for range restarts {
		stop(srv)
		time.Sleep(300 * time.Millisecond) // publishing goes on against no server
		srv = startServer(t, &server.Options{StoreDir: dir, Port: port})
		before := countAcked()
		restarted := time.Now()
		waitUntil(t, 15*time.Second, "publishes after the restart", func() bool { return countAcked() >= before+100 })
		t.Logf("publishing resumed %v after the restart", time.Since(restarted))
	}
	t.Cleanup(func() { stop(srv) })
	close(stopPub)
	wg.Wait()
	consumeStart := time.Now()

	mu.Lock()
	want := append([]string(nil), acked...)
	nfail := fails
	mu.Unlock()
	t.Logf("%d messages acked, %d publish calls failed during the restart", len(want), nfail)
	waitUntil(t, 20*time.Second, "every acked message consumed", func() bool {
		for _, id := range want {
			if col.get(id) == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("all consumed %v after publishing stopped", time.Since(consumeStart))
	firstMu.Lock()
	var late []string
	for id, a := range first {
		if a > 1 {
			late = append(late, fmt.Sprintf("%s (attempt %d)", id, a))
		}
	}
	firstMu.Unlock()
	if len(late) > 0 {
		t.Errorf("%d messages reached a handler only on a redelivery after AckWait, though the server had sent them: %v", len(late), late)
	}
	if err := tr.Close(); err != nil { // with the server up: drains and flushes acks
		t.Fatalf("Close: %v", err)
	}
}

// TestCloseWhileServerDown: Close does not hang when the server is gone.
func TestCloseWhileServerDown(t *testing.T) {
	srv := startServer(t, &server.Options{})
	tr := open(t, busnats.Config{Servers: []string{fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))}, PublishTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := tr.Subscribe(ctx, "down", func(context.Context, *transport.Message) error { return nil }, transport.SubscribeOptions{Group: "g", Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub
	stop(srv)
	// Publish without a deadline: PublishTimeout bounds it, and the error
	// says the server is unavailable (not a context error of the caller's).
	for _, n := range []int{1, 3} {
		msgs := make([]*transport.Message, n)
		for i := range msgs {
			msgs[i] = &transport.Message{ID: fmt.Sprint(i)}
		}
		err := tr.Publish(context.Background(), "down", msgs...)
		var pe *transport.PublishError
		if !errors.Is(err, transport.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pe) || len(pe.Failures) != n {
			t.Fatalf("Publish of %d with the server down = %v, want a PublishError of %d wrapping ErrUnavailable", n, err, n)
		}
		t.Log(err)
	}
	start := time.Now()
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v with the server down", d)
	}
	if err := tr.Publish(ctx, "down", &transport.Message{ID: "x"}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}
}

func debugLogger() *slog.Logger {
	if os.Getenv("BUS_TEST_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
