package transporttest

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/busway/busway/transport"
)

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
