package transport_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/busway/busway/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSubscribeOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    transport.SubscribeOptions
		wantErr error
		mention string
	}{
		{"ok", transport.SubscribeOptions{Group: "billing"}, nil, ""},
		{"missing group", transport.SubscribeOptions{}, transport.ErrInvalidOptions, "Group is required"},
		{"negative concurrency", transport.SubscribeOptions{Group: "g", Concurrency: -1}, transport.ErrInvalidOptions, "Concurrency -1"},
		{"bad start", transport.SubscribeOptions{Group: "g", StartFrom: 7}, transport.ErrInvalidOptions, "StartPosition(7)"},
		{"bad group chars", transport.SubscribeOptions{Group: "a b"}, transport.ErrInvalidOptions, `Group "a b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.Validate()
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Validate() = %v, want %v", err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
	if w := (transport.SubscribeOptions{Group: "g"}).Workers(); w != 1 {
		t.Fatalf("Workers() default = %d, want 1", w)
	}
}

func TestValidateTopic(t *testing.T) {
	good := []string{"orders", "order-events.dlq", "A_b-9", strings.Repeat("x", 249)}
	for _, s := range good {
		if err := transport.ValidateTopic(s); err != nil {
			t.Errorf("ValidateTopic(%q) = %v, want nil", s, err)
		}
	}
	bad := map[string]string{
		"":                       "empty",
		"a b":                    "' '",
		"orders.*":               "'*'",
		"orders.>":               "'>'",
		".orders":                "start or end",
		"orders.":                "start or end",
		"a..b":                   `".."`,
		"ünicode":                "not allowed",
		strings.Repeat("x", 250): "more than 249",
	}
	for s, mention := range bad {
		err := transport.ValidateTopic(s)
		if !errors.Is(err, transport.ErrInvalidTopic) {
			t.Errorf("ValidateTopic(%q) = %v, want ErrInvalidTopic", s, err)
			continue
		}
		if !strings.Contains(err.Error(), mention) {
			t.Errorf("ValidateTopic(%q) = %q, want it to mention %s", s, err, mention)
		}
	}
}

func TestValidatePublish(t *testing.T) {
	err := transport.ValidatePublish("t", []*transport.Message{{ID: "1"}, nil})
	if !errors.Is(err, transport.ErrInvalidMessage) || !strings.Contains(err.Error(), "#1 of 2") {
		t.Fatalf("ValidatePublish with a nil message = %v", err)
	}
	if err := transport.ValidatePublish("", []*transport.Message{{}}); !errors.Is(err, transport.ErrInvalidTopic) {
		t.Fatalf("ValidatePublish with empty topic = %v", err)
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad body")
	p := transport.Permanent(base)
	if !transport.IsPermanent(p) || !errors.Is(p, base) {
		t.Fatalf("Permanent(%v) = %v: not permanent or does not wrap", base, p)
	}
	wrapped := errors.Join(errors.New("ctx"), p)
	if !transport.IsPermanent(wrapped) {
		t.Fatal("IsPermanent does not see through wrapping")
	}
	if transport.Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
	if transport.IsPermanent(base) {
		t.Fatal("plain error reported permanent")
	}
	if transport.Permanent(p) != p {
		t.Fatal("Permanent wraps twice")
	}
}

func TestPublishError(t *testing.T) {
	e := &transport.PublishError{Topic: "t", Total: 10, Failures: []transport.MessageError{
		{Index: 3, ID: "a", Err: transport.ErrMessageTooLarge},
		{Index: 7, ID: "b", Err: context.DeadlineExceeded},
	}}
	if !errors.Is(e, transport.ErrMessageTooLarge) || !errors.Is(e, context.DeadlineExceeded) {
		t.Fatal("PublishError does not unwrap to its failures")
	}
	for _, want := range []string{`"t"`, "2 of 10", "#3", `"a"`, "#7"} {
		if !strings.Contains(e.Error(), want) {
			t.Errorf("%q lacks %s", e.Error(), want)
		}
	}
}

func TestMessageClone(t *testing.T) {
	m := &transport.Message{ID: "1", Header: map[string]string{"a": "b"}, Body: []byte("x"), Meta: map[string]string{"p": "1"}}
	c := m.Clone()
	c.Header["a"] = "changed"
	c.Body[0] = 'y'
	c.Meta["p"] = "2"
	if m.Header["a"] != "b" || m.Body[0] != 'x' || m.Meta["p"] != "1" {
		t.Fatal("Clone shares memory with the original")
	}
	if (*transport.Message)(nil).Clone() != nil {
		t.Fatal("nil.Clone() != nil")
	}
}

type fakeTransport struct{ transport.Transport }

func TestMux(t *testing.T) {
	var mux transport.Mux // zero value usable
	var gotURL *url.URL
	opener := transport.OpenerFunc(func(_ context.Context, u *url.URL) (transport.Transport, error) {
		gotURL = u
		return fakeTransport{}, nil
	})
	if err := mux.Register("mem", opener); err != nil {
		t.Fatal(err)
	}
	if err := mux.Register("mem", opener); !errors.Is(err, transport.ErrInvalidOptions) {
		t.Fatalf("duplicate Register = %v", err)
	}
	for _, bad := range []string{"", "Mem", "a b"} {
		if err := mux.Register(bad, opener); !errors.Is(err, transport.ErrInvalidOptions) {
			t.Fatalf("Register(%q) = %v", bad, err)
		}
	}
	if err := mux.Register("x", nil); !errors.Is(err, transport.ErrInvalidOptions) {
		t.Fatalf("Register nil opener = %v", err)
	}
	ctx := context.Background()
	if _, err := mux.Open(ctx, "mem://host?x=1"); err != nil || gotURL.Host != "host" {
		t.Fatalf("Open = %v, url %v", err, gotURL)
	}
	for _, tc := range []struct {
		raw      string
		sentinel error
		part     string
	}{
		{"", transport.ErrInvalidURL, "url"},
		{"   ", transport.ErrInvalidURL, "url"},
		{"localhost:4222", transport.ErrUnknownScheme, "scheme"},
		{"no-scheme", transport.ErrInvalidURL, "scheme"},
		{"amqp://localhost", transport.ErrUnknownScheme, "scheme"},
		{"nats://user:secret@[::1", transport.ErrInvalidURL, "url"},
		{"mem://%zz", transport.ErrInvalidURL, "url"},
	} {
		_, err := mux.Open(ctx, tc.raw)
		var ue *transport.URLError
		if !errors.Is(err, tc.sentinel) || !errors.As(err, &ue) || ue.Part != tc.part {
			t.Errorf("Open(%q) = %v, want %v at part %q", tc.raw, err, tc.sentinel, tc.part)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) error leaks the password: %v", tc.raw, err)
		}
	}
	if got := mux.Schemes(); len(got) != 1 || got[0] != "mem" {
		t.Fatalf("Schemes() = %v", got)
	}
}

func TestQuery(t *testing.T) {
	u, _ := url.Parse("x://h?n=3&d=2s&b=true&e=all&s=v")
	q := transport.NewQuery(u)
	if q.Int("n", 0) != 3 || q.Duration("d", 0) != 2*time.Second || !q.Bool("b", false) ||
		q.Enum("e", "one", "one", "all") != "all" || q.String("s", "") != "v" || q.Int("absent", 9) != 9 {
		t.Fatal("Query read wrong values")
	}
	if err := q.Err(); err != nil {
		t.Fatalf("Err() = %v", err)
	}

	for raw, part := range map[string]string{
		"x://h?n=three":    `query option "n"`,
		"x://h?d=2":        `query option "d"`,
		"x://h?b=maybe":    `query option "b"`,
		"x://h?e=some":     `query option "e"`,
		"x://h?n=1&n=2":    `query option "n"`,
		"x://h?n=1&typo=1": `query option "typo"`,
		"x://u:pw@h?zzz=1": `query option "zzz"`,
		// Pairs that do not decode (url.URL.Query drops them silently).
		"x://h?s=A%ZZ":          `query option "s"`,
		"x://h?n=1;d=2s":        `query option "n"`,
		"x://h?%ZZ=1":           `query option "%ZZ"`,
		"x://h?token=pw%ZZpw":   `query option "token"`,
		"x://h?n=1&token=pw;pw": `query option "token"`,
	} {
		u, _ := url.Parse(raw)
		q := transport.NewQuery(u)
		q.Int("n", 0)
		q.Duration("d", 0)
		q.Bool("b", false)
		q.Enum("e", "one", "one", "all")
		err := q.Err()
		var ue *transport.URLError
		if !errors.Is(err, transport.ErrInvalidURL) || !errors.As(err, &ue) || ue.Part != part {
			t.Errorf("%s: Err() = %v, want part %s", raw, err, part)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: error leaks password: %v", raw, err)
		}
	}
}

func TestValidateSubscribe(t *testing.T) {
	h := func(context.Context, *transport.Message) error { return nil }
	ok := transport.SubscribeOptions{Group: "g"}
	if err := transport.ValidateSubscribe("t", h, ok); err != nil {
		t.Fatal(err)
	}
	if err := transport.ValidateSubscribe("t", nil, ok); !errors.Is(err, transport.ErrInvalidOptions) || !strings.Contains(err.Error(), "nil Handler") {
		t.Fatalf("nil handler: %v", err)
	}
	if err := transport.ValidateSubscribe("a b", h, ok); !errors.Is(err, transport.ErrInvalidTopic) {
		t.Fatalf("bad topic: %v", err)
	}
	if err := transport.ValidateSubscribe("t", h, transport.SubscribeOptions{}); !errors.Is(err, transport.ErrInvalidOptions) {
		t.Fatalf("no group: %v", err)
	}
}

func TestCallHandlerRecoversPanics(t *testing.T) {
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	m := &transport.Message{ID: "m1", Topic: "t", Group: "g", Attempt: 2}
	boom := errors.New("boom")
	err := transport.CallHandler(context.Background(), log, func(context.Context, *transport.Message) error { panic(boom) }, m)
	var pe *transport.PanicError
	if !errors.As(err, &pe) || !errors.Is(err, boom) || len(pe.Stack) == 0 {
		t.Fatalf("CallHandler after a panic = %v, want a *PanicError with a stack wrapping the panic value", err)
	}
	for _, want := range []string{"level=ERROR", "id=m1", "topic=t", "group=g", "attempt=2", "panic=boom", "stack="} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log %q lacks %s", logged.String(), want)
		}
	}
	if err := transport.CallHandler(context.Background(), nil, func(context.Context, *transport.Message) error { return boom }, m); err != boom {
		t.Fatalf("CallHandler passes the handler's error through: got %v", err)
	}
	if err := transport.CallHandler(context.Background(), nil, func(context.Context, *transport.Message) error { panic(nil) }, m); !errors.As(err, &pe) {
		t.Fatalf("panic(nil) = %v, want a *PanicError", err)
	}
}

func TestValidateHeader(t *testing.T) {
	for _, name := range []string{"x-plain", "X-Mixed-Case", "ce_id", "busway-dlq-error", "a.b_c~!#$%&'*+^`|",
		"Ce-Type", "CE-TYPE", "nats_x", "natsy", "Nats", "busway-ids", "x-busway-id"} {
		if !transport.ValidHeaderName(name) || transport.ValidateHeader(name, "value with spaces, ünïcode") != nil {
			t.Errorf("%q refused", name)
		}
	}
	for _, name := range []string{"", "with space", "x(y)", "a:b", "a/b", "q\"", "tab\t", "ü", "del\x7f", "{}", "a@b", "a=b",
		"Nats-Msg-Id", "nats-expected-stream", "NATS-TTL", "Nats-", "ce-id", "ce-", "busway-id"} {
		err := transport.ValidateHeader(name, "v")
		if transport.ValidHeaderName(name) || !errors.Is(err, transport.ErrInvalidMessage) {
			t.Errorf("%q accepted (%v)", name, err)
		}
	}
	for _, v := range []string{"a\nb", "a\rb"} {
		if err := transport.ValidateHeader("ok", v); !errors.Is(err, transport.ErrInvalidMessage) || !strings.Contains(err.Error(), "line break") {
			t.Errorf("value %q: %v", v, err)
		}
	}
	for _, v := range []string{" v", "v ", "\tv", "v\t", " "} {
		if err := transport.ValidateHeader("ok", v); !errors.Is(err, transport.ErrInvalidMessage) || !strings.Contains(err.Error(), "white space") {
			t.Errorf("value %q: %v", v, err)
		}
	}
	for _, v := range []string{"", "a b", "a\tb", "x"} {
		if err := transport.ValidateHeader("ok", v); err != nil {
			t.Errorf("value %q: %v", v, err)
		}
	}
}
