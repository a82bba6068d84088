package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// TestTailChanbus: tail prints the events published while it runs, in one
// line each with type, key, id and data, skips other types with --type,
// and exits 0 after --count events.
func TestTailChanbus(t *testing.T) {
	cb := chanbus.New()
	t.Cleanup(func() { _ = cb.Close() })
	open := shared(cb)
	tail := start(t, open, "tail", "chan://", "orders", "--type", "order.created", "--count", "2")
	waitFor(t, 10*time.Second, "tail to subscribe", func() bool { return strings.Contains(tail.err.String(), "tailing") })

	var ids []string
	for i, typ := range []string{"order.created", "order.cancelled", "order.created"} {
		r := cli(t, open, "publish", "chan://", "orders", "--type", typ, "--key", "k"+string(rune('0'+i)), "--data", `{"n":`+string(rune('0'+i))+`}`)
		if r.code != 0 {
			t.Fatalf("publish: %v", r)
		}
		ids = append(ids, strings.TrimSpace(r.stdout))
	}
	if code := tail.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("tail exited %d\n%s", code, tail.err)
	}
	out := tail.out.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("tail printed %d lines, want 2 (the order.created events):\n%s", len(lines), out)
	}
	for i, want := range []struct{ id, key, data string }{{ids[0], "k0", `{"n":0}`}, {ids[2], "k2", `{"n":2}`}} {
		l := lines[i]
		for _, part := range []string{"order.created", "key=" + want.key, "id=" + want.id, want.data} {
			if !strings.Contains(l, part) {
				t.Errorf("line %d %q lacks %q", i+1, l, part)
			}
		}
	}
	if strings.Contains(out, ids[1]) {
		t.Errorf("tail --type order.created printed the order.cancelled event %s:\n%s", ids[1], out)
	}
}

// TestTailJSON: --json prints CloudEvents attributes and the data as JSON.
func TestTailJSON(t *testing.T) {
	cb := chanbus.New()
	t.Cleanup(func() { _ = cb.Close() })
	open := shared(cb)
	tail := start(t, open, "tail", "chan://", "orders", "--json", "--count", "1")
	waitFor(t, 10*time.Second, "tail to subscribe", func() bool { return strings.Contains(tail.err.String(), "tailing") })
	r := cli(t, open, "publish", "chan://", "orders", "--type", "order.created", "--key", "42",
		"--subject", "order/42", "--header", "x-tenant=acme", "--data", `{"id":"42","total":99.5}`)
	if r.code != 0 {
		t.Fatalf("publish: %v", r)
	}
	if code := tail.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("tail exited %d\n%s", code, tail.err)
	}
	var ev struct {
		SpecVersion, ID, Type, Source, Subject, PartitionKey, DataContentType, Topic string
		Time                                                                         time.Time
		Data                                                                         map[string]any
		Headers                                                                      map[string]string
	}
	if err := json.Unmarshal([]byte(tail.out.String()), &ev); err != nil {
		t.Fatalf("tail --json printed %q: %v", tail.out, err)
	}
	if ev.ID != strings.TrimSpace(r.stdout) || ev.Type != "order.created" || ev.Source != "busway-cli" || ev.Subject != "order/42" ||
		ev.PartitionKey != "42" || ev.SpecVersion != "1.0" || ev.DataContentType != "application/json" || ev.Topic != "orders" ||
		ev.Time.IsZero() || ev.Data["total"] != 99.5 || ev.Headers["x-tenant"] != "acme" {
		t.Errorf("tail --json: %+v", ev)
	}
}

// TestPublishEnvelope: publish writes busway's envelope: a UUIDv7 ce_id
// also used as Message.ID, type, source, time, key, content type.
func TestPublishEnvelope(t *testing.T) {
	cb := chanbus.New()
	t.Cleanup(func() { _ = cb.Close() })
	got := make(chan *transport.Message, 1)
	sub, err := cb.Subscribe(t.Context(), "orders", func(_ context.Context, m *transport.Message) error {
		got <- m.Clone()
		return nil
	}, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close(context.Background()) })
	r := cli(t, shared(cb), "publish", "chan://", "orders", "--type", "order.created", "--key", "42", "--data", `{"id":"42"}`,
		"--dataschema", "https://example.com/order.json")
	if r.code != 0 {
		t.Fatalf("publish: %v", r)
	}
	m := <-got
	h := m.Header
	id := strings.TrimSpace(r.stdout)
	if h[transport.HeaderID] != id || m.ID != id || h[transport.HeaderType] != "order.created" || h[transport.HeaderSource] != "busway-cli" ||
		h[transport.HeaderSpecVersion] != "1.0" || h[transport.HeaderTime] == "" || m.Key != "42" ||
		h[transport.HeaderContentType] != "application/json" || string(m.Body) != `{"id":"42"}` ||
		h[transport.HeaderDataSchema] != "https://example.com/order.json" {
		t.Errorf("published %+v", m)
	}
	if u, err := uuid.Parse(id); err != nil || u.Version() != 7 {
		t.Errorf("event ID %q is not a UUIDv7", id)
	}
}

// TestPublishDataFile: --data @file reads the file; bad JSON is a usage
// error (exit 2) that publishes nothing.
func TestPublishDataFile(t *testing.T) {
	cb := chanbus.New()
	t.Cleanup(func() { _ = cb.Close() })
	var n atomic.Int32
	sub, err := cb.Subscribe(t.Context(), "orders", func(_ context.Context, m *transport.Message) error {
		if string(m.Body) == `{"from":"file"}` {
			n.Add(1)
		}
		return nil
	}, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close(context.Background()) })
	file := filepath.Join(t.TempDir(), "order.json")
	if err := os.WriteFile(file, []byte(`{"from":"file"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, shared(cb), "publish", "chan://", "orders", "--type", "x", "--data", "@"+file); r.code != 0 {
		t.Fatalf("publish --data @file: %v", r)
	}
	waitFor(t, 10*time.Second, "the event from the file", func() bool { return n.Load() == 1 })
	bad := filepath.Join(t.TempDir(), "bad.json")
	_ = os.WriteFile(bad, []byte(`{"from":`), 0o600)
	for _, data := range []string{"@" + bad, "{not json", "@/does/not/exist.json"} {
		r := cli(t, shared(cb), "publish", "chan://", "orders", "--type", "x", "--data", data)
		if r.code != exitUsage || !strings.Contains(r.stderr, "--data") {
			t.Errorf("publish --data %s: want exit 2 naming --data, got %v", data, r)
		}
	}
	// A --header that publish would ignore (an envelope attribute) or that a
	// transport would refuse is a usage error that names it.
	for header, want := range map[string]string{
		"ce_id=x":               "publish sets a new one",
		"ce_partitionkey=k":     "use --key",
		"content-type=text/csv": "sent as application/json",
		"Nats-Msg-Id=x":         "reserved by NATS",
		"ce-tenant=acme":        "ce_tenant",
	} {
		r := cli(t, shared(cb), "publish", "chan://", "orders", "--type", "x", "--data", "@"+file, "--header", header)
		if r.code != exitUsage || !strings.Contains(r.stderr, want) {
			t.Errorf("publish --header %s: want exit 2 saying %q, got %v", header, want, r)
		}
	}
	if r := cli(t, shared(cb), "publish", "chan://", "orders"); r.code != exitUsage || !strings.Contains(r.stderr, "--type is required") {
		t.Errorf("publish without --type: %v", r)
	}
}

// TestHelp: every command has --help, which exits 0 and describes it.
func TestHelp(t *testing.T) {
	for _, cmd := range [][]string{{}, {"tail"}, {"publish"}, {"dlq"}, {"dlq", "list"}, {"dlq", "replay"}} {
		r := cli(t, nil, append(cmd, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("busway %s --help: %v", strings.Join(cmd, " "), r)
		}
	}
	r := cli(t, nil, "--help")
	for _, want := range []string{"tail", "publish", "dlq", "Exit codes"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("busway --help lacks %q", want)
		}
	}
}

// TestErrors: bad URLs, unreachable brokers and bad command lines give a
// clear message and their exit code, and never print the URL's secrets.
func TestErrors(t *testing.T) {
	const secret = "hunter2-s3cret"
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown scheme", []string{"publish", "amqp://u:" + secret + "@host/", "orders", "--type", "x"}, exitBadURL, `unknown transport scheme "amqp"`},
		{"no scheme", []string{"tail", "//localhost:4222", "orders"}, exitBadURL, "no scheme"},
		{"unknown option", []string{"dlq", "list", "nats://127.0.0.1:4222?bogus=1&token=" + secret, "orders"}, exitBadURL, `query option "bogus"`},
		{"bad kafka option", []string{"publish", "kafka://u:" + secret + "@127.0.0.1:9092?sasl=plain&acks=some", "orders", "--type", "x"}, exitBadURL, `query option "acks"`},
		{"nats unreachable", []string{"publish", "nats://u:" + secret + "@127.0.0.1:1", "orders", "--type", "x"}, exitUnavailable, "broker unavailable"},
		{"nats token unreachable", []string{"tail", "nats://" + secret + "@127.0.0.1:1", "orders"}, exitUnavailable, "broker unavailable"},
		{"kafka unreachable", []string{"dlq", "replay", "kafka://u:" + secret + "@127.0.0.1:1?sasl=plain", "orders", "--all", "--timeout", "5s"}, exitUnavailable, "broker unavailable"},
		{"unknown secret option", []string{"publish", "nats://127.0.0.1:4222?client_secret=" + secret + "&x_passwd=" + secret, "orders", "--type", "x"}, exitBadURL, `query option "client_secret"`},
		{"no brokers", []string{"publish", "kafka://", "orders", "--type", "x"}, exitBadURL, `transport URL "kafka://": host: `},
		{"opaque token", []string{"publish", "nats:" + secret + "@127.0.0.1:1", "orders", "--type", "x"}, exitBadURL, `transport URL "nats:xxxxx@127.0.0.1:1": `},
		{"missing args", []string{"tail", "chan://"}, exitUsage, "want 2 arguments"},
		{"unknown flag", []string{"tail", "chan://", "orders", "--frm", "earliest"}, exitUsage, "unknown flag"},
		{"bad --from", []string{"tail", "chan://", "orders", "--from", "yesterday"}, exitUsage, "--from"},
		{"unknown command", []string{"tial"}, exitUsage, "unknown command"},
		{"replay without selection", []string{"dlq", "replay", "chan://", "orders"}, exitUsage, "--id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := cli(t, nil, c.args...)
			if r.code != c.code || !strings.Contains(r.stderr, c.want) {
				t.Errorf("want exit %d and %q in stderr, got %v", c.code, c.want, r)
			}
			if strings.Contains(r.stdout+r.stderr, secret) {
				t.Errorf("the secret was printed: %v", r)
			}
		})
	}
}

// TestTailShowsNoControlCharacters: an event's attributes and data come
// from whoever published it; tail's text lines show a control character
// (an ANSI escape, a tab, a bidirectional override) as its escape, never
// as itself.
func TestTailShowsNoControlCharacters(t *testing.T) {
	cb := chanbus.New()
	t.Cleanup(func() { _ = cb.Close() })
	open := shared(cb)
	tail := start(t, open, "tail", "chan://", "orders", "--count", "1")
	waitFor(t, 10*time.Second, "tail to subscribe", func() bool { return strings.Contains(tail.err.String(), "tailing") })
	m := &transport.Message{ID: "m1", Key: "a\tb", Body: []byte("{\"n\":\"\x1b[31mred\u202e\"}"),
		Header: map[string]string{transport.HeaderType: "x\x1b[2J", transport.HeaderID: "id\x07"}}
	if err := cb.Publish(t.Context(), "orders", m); err != nil {
		t.Fatal(err)
	}
	if code := tail.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("tail exited %d\n%s", code, tail.err)
	}
	out := tail.out.String()
	if strings.ContainsAny(out, "\x1b\x07\t\u202e") {
		t.Fatalf("tail printed a control character: %q", out)
	}
	for _, want := range []string{`x\x1b[2J`, `key=a\tb`, `id=id\a`, `\x1b[31mred\u202e`} {
		if !strings.Contains(out, want) {
			t.Errorf("tail line %q lacks %s", out, want)
		}
	}
}
