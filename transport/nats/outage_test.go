package nats_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
	"github.com/busway/busway/transport/transporttest"
)

// TestPublishDuringOutage: the embedded server stops (same store dir and
// port kept) and comes back after an outage; a Publish started during the
// outage, with the default 5 s PublishTimeout, returns nil soon after the
// server is back instead of waiting out its timeout; publishes that give
// up meanwhile fail with an error matching transport.ErrUnavailable; and
// the published messages are all consumed. Done twice.
func TestPublishDuringOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a server")
	}
	dir := t.TempDir()
	srv := startServer(t, &server.Options{StoreDir: dir})
	port := portOf(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	tr := open(t, busnats.Config{Servers: []string{url}})
	defer tr.Close()
	short := open(t, busnats.Config{Servers: []string{url}, PublishTimeout: 300 * time.Millisecond})
	defer short.Close()
	topic := transporttest.UniqueTopic(t)
	col := newCollector()
	subscribe(t, tr, topic, col.handle, transport.SubscribeOptions{Group: "g"})

	const outage = 1500 * time.Millisecond
	var sent []string
	for round := range 2 {
		stop(srv)
		// A publish that gives up during the outage: by its PublishTimeout,
		// an error matching ErrUnavailable; by the caller's deadline, the
		// context's error as it is.
		err := short.Publish(context.Background(), topic, &transport.Message{ID: fmt.Sprintf("short-%d", round), Key: "k"})
		if !errors.Is(err, transport.ErrUnavailable) {
			t.Errorf("round %d: publish timing out during the outage: %v, want an error matching ErrUnavailable", round, err)
		}
		t.Logf("round %d: publish timing out during the outage: %v", round, err)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err = tr.Publish(ctx, topic, &transport.Message{ID: fmt.Sprintf("deadline-%d", round), Key: "k"})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("round %d: publish past its deadline during the outage: %v, want context.DeadlineExceeded", round, err)
		}

		// One in flight across the server's return.
		id := fmt.Sprintf("inflight-%d", round)
		done := make(chan error, 1)
		started := time.Now()
		go func() { done <- tr.Publish(context.Background(), topic, &transport.Message{ID: id, Key: "k"}) }()
		time.Sleep(outage)
		srv = startServer(t, &server.Options{StoreDir: dir, Port: port})
		back := time.Now()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: in-flight publish: %v", round, err)
			}
			t.Logf("round %d: in-flight publish returned %v after the server was back (%v after it started; PublishTimeout 5s)",
				round, time.Since(back).Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
			if time.Since(started) >= busnats.DefaultPublishTimeout {
				t.Errorf("round %d: the in-flight publish waited out its whole timeout", round)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: in-flight publish did not return", round)
		}
		sent = append(sent, id)
	}
	defer stop(srv)
	waitUntil(t, 30*time.Second, "the in-flight messages consumed", func() bool {
		for _, id := range sent {
			if col.get(id) == 0 {
				return false
			}
		}
		return true
	})
}

// TestBatchAcrossOutage: a batch in flight when the server stops reports
// each message stored or failed (ErrUnavailable: its ack may be lost with
// the connection; or, sent after the drop, its caller's deadline passed),
// and every message it reports stored is consumed once
// the server is back; a batch published during the outage (into nats.go's
// reconnect buffer) returns nil once the server is back, its acks coming
// to the batch inbox of the new connection.
func TestBatchAcrossOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a server")
	}
	dir := t.TempDir()
	srv := startServer(t, &server.Options{StoreDir: dir})
	port := portOf(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	tr := open(t, busnats.Config{Servers: []string{url}, PublishTimeout: 20 * time.Second})
	defer tr.Close()
	topic := transporttest.UniqueTopic(t)
	batch := func(prefix string, n int) []*transport.Message {
		msgs := make([]*transport.Message, n)
		for i := range msgs {
			msgs[i] = &transport.Message{ID: fmt.Sprint(prefix, i), Body: []byte("x")}
		}
		return msgs
	}
	wait := func(done <-chan error, what string) error {
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not return", what)
			return nil
		}
	}
	if err := tr.Publish(ctxT(t), topic, batch("warm-", 10)...); err != nil {
		t.Fatal(err)
	}

	cut := batch("cut-", 20000)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		done <- tr.Publish(ctx, topic, cut...)
	}()
	waitUntil(t, 10*time.Second, "part of the batch stored", func() bool { return streamMsgs(t, tr) > 1000 })
	stop(srv)
	failed := map[string]bool{}
	if err := wait(done, "the batch cut by the outage"); err != nil {
		var pe *transport.PublishError
		if !errors.As(err, &pe) {
			t.Fatalf("batch cut by the outage: %v, want a *PublishError", err)
		}
		for _, f := range pe.Failures {
			failed[f.ID] = true
			if !errors.Is(f.Err, transport.ErrUnavailable) && !errors.Is(f.Err, context.DeadlineExceeded) {
				t.Errorf("%s: %v, want an error matching ErrUnavailable or DeadlineExceeded", f.ID, f.Err)
			}
		}
	}
	t.Logf("batch cut by the outage: %d of %d failed", len(failed), len(cut))

	waitUntil(t, 10*time.Second, "the transport to see the outage", func() bool { return !tr.Conn().IsConnected() })
	during := batch("during-", 100)
	done = make(chan error, 1)
	go func() { done <- tr.Publish(context.Background(), topic, during...) }()
	srv = startServer(t, &server.Options{StoreDir: dir, Port: port})
	defer stop(srv)
	if err := wait(done, "the batch sent during the outage"); err != nil {
		t.Fatalf("batch sent during the outage: %v", err)
	}

	col := newCollector()
	subscribe(t, tr, topic, col.handle, transport.SubscribeOptions{Group: "g", StartFrom: transport.StartEarliest})
	waitUntil(t, 30*time.Second, "every message reported stored consumed", func() bool {
		for _, m := range append(cut, during...) {
			if !failed[m.ID] && col.get(m.ID) == 0 {
				return false
			}
		}
		return true
	})
}
