package busway_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
	"github.com/busway/busway/transport/kafka"
	"github.com/busway/busway/transport/nats"
)

// errParsed is what the parse-only openers of fuzzMux return for a URL
// that parsed: they never dial.
var errParsed = errors.New("parsed")

// fuzzMux is the mux busway.NewMux builds, with the nats and kafka openers
// replaced by their parsing functions, so that fuzzing never dials.
func fuzzMux(t *testing.T) *transport.Mux {
	var m transport.Mux
	for scheme, o := range map[string]transport.Opener{
		chanbus.Scheme: chanbus.Opener(), // starts nothing until Subscribe
		nats.Scheme: transport.OpenerFunc(func(_ context.Context, u *url.URL) (transport.Transport, error) {
			if _, err := nats.ConfigFromURL(u); err != nil {
				return nil, err
			}
			return nil, errParsed
		}),
		kafka.Scheme: transport.OpenerFunc(func(_ context.Context, u *url.URL) (transport.Transport, error) {
			if _, err := kafka.ConfigFromURL(u); err != nil {
				return nil, err
			}
			return nil, errParsed
		}),
	} {
		if err := m.Register(scheme, o); err != nil {
			t.Fatal(err)
		}
	}
	return &m
}

// secrets returns the credentials u carries: its password, its user name
// when it has no password (a NATS token), and the values of secret query
// options.
func secrets(u *url.URL) []string {
	var s []string
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			s = append(s, pw)
		} else {
			s = append(s, u.User.Username())
		}
	}
	for k, vs := range u.Query() {
		if transport.SecretOption(k) {
			s = append(s, vs...)
		}
	}
	return s
}

// FuzzOpenURL feeds arbitrary URLs of every scheme through the mux and
// each transport's URL parser (never dialing): no panic; every error is a
// *transport.URLError wrapping ErrInvalidURL or ErrUnknownScheme; and no
// credential in the URL appears in an error or in the URL's printed form
// (transport.Redact).
func FuzzOpenURL(f *testing.F) {
	for _, s := range []string{
		"chan://", "chan://?buffer=8&shards=4", "chan://?backoff_min=1ms&backoff_max=1s&drain_timeout=2s",
		"chan://host", "chan://?buffer=0", "chan://?buffer=99999999999999999999",
		"nats://127.0.0.1:4222", "nats://a:4222,b:4223?stream=ORDERS&replicas=3",
		"nats://user:s3cretpassw0rd@127.0.0.1:4222?stream=S", "nats://t0kenvalue1234@127.0.0.1",
		"nats://127.0.0.1?token=t0kenvalue1234&strem=x", "nats://embedded?store_dir=/tmp/x&port=0&max_payload=1048576",
		"nats://embedded", "nats://host:99999", "nats://:4222", "nats://h?ack_wait=1s&max_deliver=5&nak_delay=1s,2s",
		"nats://h?provision=bind&storage=memory&max_age=1h&duplicates=2m&max_ack_pending=100",
		"kafka://localhost:9092", "kafka://a:9092,b:9092?partitions=6&acks=leader&compression=zstd",
		"kafka://user:s3cretpassw0rd@h:9092?sasl=scram-sha-512&tls=true",
		"kafka://user:s3cretpassw0rd@h:9092?sasl=bogus", "kafka://user:s3cretpassw0rd@h:9092",
		"kafka://h?commit_every=10&max_attempts=-1&drain_timeout=1s&rebalance_timeout=2s",
		"kafka://h,,k", "redis://localhost", "nats://user:pass word@host", "nats://us%zzer:pw@host",
		"://nohost", "nats:opaque", "nats://user:s3cretpassw0rd@host:port", "nats://h?token=a&token=b",
		"nats://h?tls_ca=/dev/zero", "kafka://h?tls_ca=/dev/zero&tls=true", "kafka://h?tls_cert=/etc/hostname",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		tr, err := fuzzMux(t).Open(context.Background(), raw)
		if err == nil {
			if cerr := tr.Close(); cerr != nil {
				t.Fatalf("Close: %v", cerr)
			}
		} else if !errors.Is(err, errParsed) {
			var ue *transport.URLError
			if !errors.As(err, &ue) || !(errors.Is(err, transport.ErrInvalidURL) || errors.Is(err, transport.ErrUnknownScheme)) {
				t.Fatalf("Open(%q) = %v: not a *URLError wrapping ErrInvalidURL or ErrUnknownScheme", raw, err)
			}
			if ue.Part == "" {
				t.Fatalf("Open(%q) = %v: names no part", raw, err)
			}
		}
		u, perr := url.Parse(raw)
		if perr != nil {
			return
		}
		printed := transport.Redact(u)
		for _, s := range secrets(u) {
			// A secret that also appears elsewhere in the URL, or is a word
			// of busway's own texts, may be there for that other reason.
			if len(s) < 8 || strings.Count(raw, s) > 1 || strings.Count(raw, url.QueryEscape(s)) > 1 {
				continue
			}
			if strings.Contains(printed, s) {
				t.Fatalf("Redact(%q) = %q shows the secret %q", raw, printed, s)
			}
			if err != nil && strings.Contains(err.Error(), s) {
				t.Fatalf("Open(%q) = %v: shows the secret %q", raw, err, s)
			}
		}
	})
}
