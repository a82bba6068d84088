package kafka

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// roundTrip publishes one message and waits for a subscriber to get it.
func roundTrip(t *testing.T, tr *Transport) {
	t.Helper()
	topic := transporttest.UniqueTopic(t)
	got := make(chan *transport.Message, 1)
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		select {
		case got <- m.Clone():
		default:
		}
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t)})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close(context.Background())
	if err := tr.Publish(t.Context(), topic, &transport.Message{ID: "sasl-1", Key: "k", Body: []byte("hi")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case m := <-got:
		if m.ID != "sasl-1" || string(m.Body) != "hi" {
			t.Fatalf("got %+v", m)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("message not delivered")
	}
}

func TestSASL(t *testing.T) {
	c := newCluster(t, kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plain-user", "plain-pw"),
		kfake.Superuser("SCRAM-SHA-256", "scram256", "pw-256"),
		kfake.Superuser("SCRAM-SHA-512", "scram512", "pw-512"),
	)
	for _, tc := range []struct{ mech, user, pw string }{
		{"PLAIN", "plain-user", "plain-pw"},
		{"SCRAM-SHA-256", "scram256", "pw-256"},
		{"SCRAM-SHA-512", "scram512", "pw-512"},
	} {
		t.Run(tc.mech, func(t *testing.T) {
			cfg := testConfig(c.ListenAddrs())
			cfg.SASL = SASL{Mechanism: tc.mech, Username: tc.user, Password: tc.pw}
			roundTrip(t, open(t, cfg))

			cfg.SASL.Password = "wrong"
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			tr, err := New(ctx, cfg)
			if err == nil {
				tr.Close()
				t.Fatal("New with a wrong password succeeded")
			}
			if !errors.Is(err, transport.ErrAuthentication) {
				t.Fatalf("wrong password: %v, want ErrAuthentication", err)
			}
			t.Logf("wrong password: %v", err)
		})
	}
	t.Run("no credentials", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		tr, err := New(ctx, testConfig(c.ListenAddrs()))
		if err == nil {
			tr.Close()
			t.Fatal("New without credentials against a SASL cluster succeeded")
		}
		t.Logf("no credentials: %v", err)
	})
}

func TestUnreachableBrokers(t *testing.T) {
	cfg := testConfig([]string{"127.0.0.1:1"}) // nothing listens on port 1
	cfg.DialTimeout = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	tr, err := New(ctx, cfg)
	if err == nil {
		tr.Close()
		t.Fatal("New succeeded with no broker")
	}
	if !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("error %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("error %q does not name the broker", err)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)

	// A broker that accepts connections but never answers: the context's
	// deadline ends New, with the context's error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	defer func() {
		ln.Close()
		<-accepted
		for _, c := range held {
			c.Close()
		}
	}()
	short, cancel2 := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel2()
	start = time.Now()
	_, err = New(short, Config{Brokers: []string{ln.Addr().String()}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent broker: %v, want the context's deadline", err)
	}
	t.Logf("silent broker, after %v: %v", time.Since(start).Round(time.Millisecond), err)
}

func TestMissingTopicWithoutProvisioning(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.Topics.Disable = true
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)
	err := tr.Publish(t.Context(), topic, &transport.Message{Body: []byte("x")})
	if !errors.Is(err, transport.ErrTopicNotFound) || !strings.Contains(err.Error(), topic) {
		t.Fatalf("Publish: %v, want ErrTopicNotFound naming %q", err, topic)
	}
	t.Logf("Publish: %v", err)
	_, err = tr.Subscribe(t.Context(), topic, func(context.Context, *transport.Message) error { return nil },
		transport.SubscribeOptions{Group: transporttest.UniqueGroup(t)})
	if !errors.Is(err, transport.ErrTopicNotFound) || !strings.Contains(err.Error(), topic) {
		t.Fatalf("Subscribe: %v, want ErrTopicNotFound naming %q", err, topic)
	}

	// Once the topic exists (created by someone else), both work.
	other := open(t, testConfig(c.ListenAddrs()))
	if err := other.Publish(t.Context(), topic, &transport.Message{Body: []byte("creates it")}); err != nil {
		t.Fatal(err)
	}
	roundTripOn(t, tr, topic)
}

func roundTripOn(t *testing.T, tr *Transport, topic string) {
	t.Helper()
	got := make(chan string, 1)
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		select {
		case got <- m.ID:
		default:
		}
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t)})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close(context.Background())
	if err := tr.Publish(t.Context(), topic, &transport.Message{ID: "after", Body: []byte("x")}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case id := <-got:
		if id != "after" {
			t.Fatalf("got %q", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("not delivered")
	}
}

func TestMessageTooLarge(t *testing.T) {
	c := newCluster(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "2000"}))
	cfg := testConfig(c.ListenAddrs())
	cfg.MaxMessageBytes = 1000
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)

	// Over our own limit: nothing is sent, the message is named.
	small := &transport.Message{ID: "ok", Body: []byte("fits")}
	big := &transport.Message{ID: "big", Body: make([]byte, 1500)}
	err := tr.Publish(t.Context(), topic, small, big)
	var pe *transport.PublishError
	if !errors.Is(err, transport.ErrMessageTooLarge) || !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].ID != "big" {
		t.Fatalf("Publish: %v, want ErrMessageTooLarge for message big", err)
	}
	t.Logf("client side: %v", err)

	// Over the broker's limit (a topic created elsewhere, with the
	// broker's default): the broker's refusal.
	cfg2 := testConfig(c.ListenAddrs())
	cfg2.MaxMessageBytes = 1 << 20
	tr2 := open(t, cfg2)
	if err := tr2.createTopicWith(t.Context(), topic+"-b", nil); err != nil {
		t.Fatal(err)
	}
	err = tr2.Publish(t.Context(), topic+"-b", &transport.Message{ID: "huge", Body: make([]byte, 5000)})
	if !errors.Is(err, transport.ErrMessageTooLarge) || !errors.As(err, &pe) || pe.Failures[0].ID != "huge" {
		t.Fatalf("Publish: %v, want ErrMessageTooLarge from the broker", err)
	}
	t.Logf("broker side: %v", err)
	// Nothing lost: the transport still works, and a good message goes.
	if err := tr2.Publish(t.Context(), topic+"-b", &transport.Message{ID: "fine", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
}

func TestClosedTransport(t *testing.T) {
	c := newCluster(t)
	tr, err := New(t.Context(), testConfig(c.ListenAddrs()))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := tr.Publish(t.Context(), "t", &transport.Message{}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if _, err := tr.Subscribe(t.Context(), "t", func(context.Context, *transport.Message) error { return nil },
		transport.SubscribeOptions{Group: "g"}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
}

// A second Close while the first still drains a subscription waits for it,
// rather than returning before the transport is released.
func TestConcurrentCloseWaitsForTheFirst(t *testing.T) {
	c := newCluster(t)
	tr, err := New(t.Context(), testConfig(c.ListenAddrs()))
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	_, err = tr.Subscribe(t.Context(), "close-twice", func(context.Context, *transport.Message) error {
		once.Do(func() { close(started) })
		<-release
		return nil
	}, transport.SubscribeOptions{Group: "g", StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(t.Context(), "close-twice", &transport.Message{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not start")
	}
	first := make(chan error, 1)
	go func() { first <- tr.Close() }()
	for !tr.closer.Closed() {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { second <- tr.Close() }()
	select {
	case err := <-second:
		t.Errorf("second Close returned (%v) while the first was draining a handler", err)
		second <- err
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := <-second; err != nil {
		t.Errorf("second Close: %v", err)
	}
}
