package transport

import (
	"context"
	"fmt"
	"net/url"
)

// URLShape is what a transport's URLs hold besides their query options:
// its scheme, whether the host part names servers, and whether user
// information may be given. CheckURL checks a URL against it, so every
// opener rejects a malformed URL the same way, with a *URLError naming the
// part; the query options are read with a Query, whose Err names unknown
// ones.
type URLShape struct {
	// Scheme is the transport's URL scheme.
	Scheme string
	// Hosts: the host part names the servers and is required; else it must
	// be empty ("chan://").
	Hosts bool
	// HostHint finishes the error about the host part: when Hosts, the
	// whole text for a missing host ("no brokers (want
	// kafka://host:9092[,host2:9092])"); else what to write instead of a
	// host ("chan:// takes no host (write chan:// or chan://?buffer=64)").
	HostHint string
	// NoUser: the URL takes no user information (user, password, token).
	NoUser bool
	// PathHint finishes the error about a path (every busway URL has none):
	// "a nats URL has no path (the stream is the option stream=)". Default
	// "a <scheme> URL has no path".
	PathHint string
}

// CheckURL returns a *URLError wrapping ErrInvalidURL when u does not have
// the shape s: another scheme ("scheme"), an opaque URL ("url", or "host"
// when s.Hosts), a missing or unexpected host ("host"), user information
// where s.NoUser ("userinfo"), a fragment ("fragment"), or a path other
// than "/" ("path").
func CheckURL(u *url.URL, s URLShape) error {
	switch {
	case u.Scheme != s.Scheme:
		return InvalidURL(u, "scheme", "%q is not %q", u.Scheme, s.Scheme)
	case s.Hosts && (u.Opaque != "" || u.Host == ""):
		return InvalidURL(u, "host", "%s", s.HostHint)
	case u.Opaque != "":
		return InvalidURL(u, "url", "%q: want %s:// with options in the query", u.Opaque, s.Scheme)
	case !s.Hosts && u.Host != "":
		return InvalidURL(u, "host", "%q: %s", u.Host, s.HostHint)
	case s.NoUser && u.User != nil:
		return InvalidURL(u, "userinfo", "%s:// takes no user or password", s.Scheme)
	case u.Fragment != "" || u.RawFragment != "":
		return InvalidURL(u, "fragment", "a %s URL has no fragment (a '#' in a user name, password or token is written %%23)", s.Scheme)
	case u.Path != "" && u.Path != "/":
		hint := s.PathHint
		if hint == "" {
			hint = "a " + s.Scheme + " URL has no path"
		}
		return InvalidURL(u, "path", "%q: %s", u.Path, hint)
	}
	return nil
}

// InvalidURL returns a *URLError about part of u (redacted), wrapping
// ErrInvalidURL, with the text format makes of args (a %w in format
// wraps its error too): what an opener returns about a URL it cannot
// open.
func InvalidURL(u *url.URL, part, format string, args ...any) *URLError {
	return &URLError{URL: Redact(u), Part: part, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalidURL}, args...)...)}
}

// OpenConfig is the OpenTransport of a transport's URLOpener: parse turns
// u into the transport's config (its URL shape checked, its options read
// over the opener's defaults), open opens it. On failure the Transport is
// nil, never a non-nil interface holding a nil pointer, which returning
// New's (*T, error) directly as (Transport, error) would give.
func OpenConfig[C any, T Transport](ctx context.Context, u *url.URL, parse func(*url.URL) (C, error), open func(context.Context, C) (T, error)) (Transport, error) {
	c, err := parse(u)
	if err != nil {
		return nil, err
	}
	t, err := open(ctx, c)
	if err != nil {
		return nil, err
	}
	return t, nil
}
