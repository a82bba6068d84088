package busway_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/busway/busway"
	"github.com/busway/busway/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOpenSchemes(t *testing.T) {
	if got := strings.Join(busway.NewMux().Schemes(), ","); got != "chan,kafka,nats" {
		t.Fatalf("schemes = %s", got)
	}
	ctx := context.Background()
	for _, raw := range []string{"", "chan://", "chan://?buffer=8"} {
		tr, err := busway.Open(ctx, raw)
		if err != nil {
			t.Fatalf("Open(%q) = %v", raw, err)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenBadURLs(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		raw      string
		sentinel error
		mention  string
	}{
		{"redis://localhost", transport.ErrUnknownScheme, `"redis"`},
		{"chan://?buffer=lots", transport.ErrInvalidURL, `"buffer"`},
		{"chan://?bogus=1", transport.ErrInvalidURL, `"bogus"`},
		{"nats://127.0.0.1:4222?strem=X", transport.ErrInvalidURL, `"strem"`},
		{"kafka://localhost:9092?acks=some", transport.ErrInvalidURL, `"acks"`},
		// Pairs that url.URL.Query would drop without a word, leaving the
		// option at its default.
		{"nats://127.0.0.1:4222?stream=ORDERS%ZZ", transport.ErrInvalidURL, `"stream"`},
		{"kafka://localhost:9092?acks=1;partitions=6", transport.ErrInvalidURL, `'&'`},
		{"chan://?buffer%G=64", transport.ErrInvalidURL, `"buffer%G"`},
		{" nats://127.0.0.1:4222", transport.ErrInvalidURL, "white space"},
		{"nats://127.0.0.1:4222\n", transport.ErrInvalidURL, "white space"},
		{"kafka://:user@:pw", transport.ErrInvalidURL, ""},
		// An unescaped '#' in a token or password: net/url would take what
		// precedes it for the host (and dial it), and the error would
		// show it.
		{"nats://s3cr#et@127.0.0.1:4222", transport.ErrInvalidURL, "%23"},
		{"kafka://u:pa#ss@127.0.0.1:9092?sasl=plain", transport.ErrInvalidURL, "%23"},
		{"chan://#fragment", transport.ErrInvalidURL, "fragment"},
	} {
		tr, err := busway.Open(ctx, tc.raw)
		if err == nil {
			tr.Close()
			t.Errorf("Open(%q) succeeded", tc.raw)
			continue
		}
		if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Open(%q) = %v, want %v mentioning %s", tc.raw, err, tc.sentinel, tc.mention)
		}
		for _, secret := range []string{"s3cr", "pa#", "pa%23", ":pa"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Open(%q) = %v: shows a piece of the secret", tc.raw, err)
			}
		}
	}
	// OpenURL, given a parsed URL, checks the same.
	u := &url.URL{Scheme: "chan", Host: "", RawQuery: "buffer=8", Fragment: "x"}
	if tr, err := busway.NewMux().OpenURL(ctx, u); err == nil || !errors.Is(err, transport.ErrInvalidURL) || !strings.Contains(err.Error(), "fragment") {
		if tr != nil {
			tr.Close()
		}
		t.Errorf("OpenURL with a fragment: %v, want ErrInvalidURL naming the fragment", err)
	}
}
