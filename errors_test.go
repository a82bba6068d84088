package busway_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway"
	"github.com/busway/busway/bus"
	"github.com/busway/busway/bustest"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// checkErr asserts an error's whole text, its class and that it names
// busway once.
func checkErr(t *testing.T, what string, err error, class error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: no error, want %q", what, want)
		return
	case !errors.Is(err, class):
		t.Errorf("%s: %v does not match %v", what, err, class)
	}
	if got := err.Error(); got != want && !(strings.HasSuffix(want, "...") && strings.HasPrefix(got, strings.TrimSuffix(want, "..."))) {
		t.Errorf("%s:\n got %s\nwant %s", what, got, want)
	}
	if n := strings.Count(err.Error(), "busway: "); n > 1 {
		t.Errorf("%s: %q names busway %d times", what, err, n)
	}
}

// URLs are echoed as written, credentials redacted.
func TestURLsEchoedAsWritten(t *testing.T) {
	ctx := t.Context()
	for _, c := range []struct {
		raw, want string
		class     error
	}{
		{"chan:?buffer=abc", `busway: transport URL "chan:?buffer=abc": query option "buffer": invalid transport URL: "abc" is not an integer`, transport.ErrInvalidURL},
		{"chan://?buffer=abc", `busway: transport URL "chan://?buffer=abc": query option "buffer": invalid transport URL: "abc" is not an integer`, transport.ErrInvalidURL},
		{"chan://?shards=2&bogus=1", `busway: transport URL "chan://?shards=2&bogus=1": query option "bogus": invalid transport URL: unknown option(s) bogus`, transport.ErrInvalidURL},
		{"nats://alice:s3cret@127.0.0.1:4222?bogus=1", `busway: transport URL "nats://alice:xxxxx@127.0.0.1:4222?bogus=1": query option "bogus": invalid transport URL: unknown option(s) bogus`, transport.ErrInvalidURL},
		{"nats://t0ken@127.0.0.1:4222?ack_wait=soon", `busway: transport URL "nats://xxxxx@127.0.0.1:4222?ack_wait=soon": query option "ack_wait": invalid transport URL: "soon" is not a duration (e.g. 500ms, 2s)`, transport.ErrInvalidURL},
		{"kafka://bob:pw@127.0.0.1:9092?sasl=plain&acks=maybe", `busway: transport URL "kafka://bob:xxxxx@127.0.0.1:9092?sasl=plain&acks=maybe": query option "acks": invalid transport URL: "maybe" is not one of all, leader, none, -1, 1, 0`, transport.ErrInvalidURL},
		{"redis://u:p@localhost", `busway: transport URL "redis://u:xxxxx@localhost": scheme: unknown transport scheme "redis" (registered: chan, kafka, nats)`, transport.ErrUnknownScheme},
	} {
		tr, err := busway.Open(ctx, c.raw)
		if err == nil {
			tr.Close()
		}
		checkErr(t, c.raw, err, c.class, c.want)
		if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "t0ken")) {
			t.Errorf("%s: error shows the credentials: %v", c.raw, err)
		}
	}
}

// An unusable store directory is reported at once, with its cause.
func TestEmbeddedNATSStoreDirCause(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dir, cause string }{
		{"/proc/nope", "mkdir /proc/nope: no such file or directory"},
		{file, "mkdir " + file + ": not a directory"},
	} {
		// Far longer than the server's 10 s readiness wait: a cause
		// reported at once is not that timeout's error.
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		tr, err := busway.Open(ctx, "nats://embedded?store_dir="+c.dir)
		cancel()
		if err == nil {
			tr.Close()
		}
		checkErr(t, c.dir, err, transport.ErrInvalidOptions,
			`nats: embedded server: store_dir "`+c.dir+`" is not a usable directory: invalid options: `+c.cause)
	}
}

// A Kafka URL at a port that does not speak Kafka: dial_timeout bounds the
// wait, and the error is ErrUnavailable, not the caller's deadline.
func TestKafkaURLAtNonKafkaPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 16) // connections held open, silent
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c:
			default:
				c.Close()
			}
		}
	}()
	defer func() {
		ln.Close()
		<-accepted
		close(held)
		for c := range held {
			c.Close()
		}
	}()
	web := httptest.NewServer(http.NotFoundHandler()) // answers, but HTTP
	defer web.Close()
	// Speaks first, as a NATS server does: its INFO line read as a Kafka
	// response size asks for far more bytes than ever come.
	chatty, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	chattyDone := make(chan struct{})
	go func() {
		defer close(chattyDone)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := chatty.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			c.Write([]byte("INFO {\"server_id\":\"x\",\"version\":\"2.9.10\"}\r\n"))
		}
	}()
	defer func() { chatty.Close(); <-chattyDone }()

	silent, httpAddr, natsLike := ln.Addr().String(), strings.TrimPrefix(web.URL, "http://"), chatty.Addr().String()
	for _, c := range []struct{ addr, want string }{
		{silent, silent + " accepted the connection but sent no Kafka response within dial_timeout 500ms (is it a Kafka broker?)"},
		{httpAddr, httpAddr + " accepted the connection but sent no Kafka response within dial_timeout 500ms (is it a Kafka broker?)"}, // waits for a request line
		{natsLike, natsLike + ` is not a Kafka broker: it answered "INFO {\"s"`},
	} {
		addr := c.addr
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		tr, err := busway.Open(ctx, "kafka://"+addr+"?dial_timeout=500ms")
		ctxErr := ctx.Err()
		cancel()
		if err == nil {
			tr.Close()
			t.Fatalf("%s: Open succeeded", addr)
		}
		if ctxErr != nil || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: dial_timeout not honoured: %v", addr, err)
		}
		checkErr(t, addr, err, transport.ErrUnavailable, "kafka: connecting to ["+addr+"]: broker unavailable: "+c.want)
	}
}

type Order struct {
	ID string `json:"id"`
}

// One "busway: " per error chain.
func TestOnePrefixPerChain(t *testing.T) {
	ctx := t.Context()

	// Publish after Shutdown.
	b := bus.New(chanbus.New())
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	checkErr(t, "publish after shutdown", bus.Publish(ctx, b, Order{}), bus.ErrClosed,
		"busway: publish Order: transport closed: the bus is shut down")
	_, err := bus.Subscribe(b, "g", func(context.Context, bus.Event[Order]) error { return nil })
	checkErr(t, "subscribe after shutdown", err, bus.ErrClosed,
		`busway: Subscribe busway_test.Order in group "g": transport closed: the bus is shut down`)

	// The transport closed under a running bus.
	ct := chanbus.New()
	b = bus.New(ct)
	ct.Close()
	checkErr(t, "publish on a closed transport", bus.Publish(ctx, b, Order{}), transport.ErrClosed,
		`busway: publish Order to topic "Order": chanbus: publish to "Order": transport closed`)
	_ = b.Shutdown(ctx)

	// Invalid options of New.
	b = bus.New(nil)
	checkErr(t, "nil transport", bus.Publish(ctx, b, Order{}), bus.ErrInvalidOptions, "busway: New: invalid options: nil transport")

	// A handler's failed Publish, given up on by Retry.
	inner := bus.Publish(ctx, bus.New(ct), Order{})
	re := &middleware.RetryError{Attempts: 3, Err: inner}
	checkErr(t, "retry of a failed publish", re, transport.ErrClosed,
		`busway: after 3 attempt(s): publish Order to topic "Order": chanbus: publish to "Order": transport closed`)
}

// A dead letter's error header names busway once.
func TestDeadLetterHeaderOnePrefix(t *testing.T) {
	h := bustest.New(t, bustest.WithDeadLetter(middleware.DeadLetterOptions{}),
		bustest.WithBusOptions(bus.WithMiddleware(middleware.Retry(middleware.RetryOptions{MaxAttempts: 3, InitialInterval: time.Millisecond}))))
	if _, err := bus.Subscribe(h.Bus(), "billing", func(context.Context, bus.Event[Order]) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := h.Transport().Publish(t.Context(), "Order", &transport.Message{ID: "raw-1",
		Header: map[string]string{transport.HeaderType: "Order"}, Body: []byte(`{"id":42}`)}); err != nil {
		t.Fatal(err)
	}
	h.Wait()
	dl := h.DeadLetters()
	if len(dl) != 1 {
		t.Fatalf("dead letters %+v", dl)
	}
	want := `busway: after 1 attempt(s): decode event "raw-1" on topic "Order" of type "Order" into busway_test.Order: json: cannot unmarshal number into Go struct field Order.id of type string`
	if got := dl[0].Err; got != want {
		t.Errorf("DLQ error header\n got %s\nwant %s", got, want)
	}
}

// The logger given to NewMux reaches the transports it opens.
func TestMuxLoggerReachesTransports(t *testing.T) {
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tr, err := busway.NewMux(busway.WithLogger(log)).Open(t.Context(), "chan://?buffer=8")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Publish(t.Context(), "nobody-reads", &transport.Message{ID: "m1"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "no group subscribes to the topic") || !strings.Contains(logged.String(), "topic=nobody-reads") {
		t.Errorf("transport log: %q", logged.String())
	}
	if n := tr.(*chanbus.Transport).Stats().Unrouted; n != 1 {
		t.Errorf("Unrouted = %d, want 1", n)
	}
}
