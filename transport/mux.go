package transport

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Opener opens a transport from a URL whose scheme it was registered for.
type Opener interface {
	OpenTransport(ctx context.Context, u *url.URL) (Transport, error)
}

// OpenerFunc adapts a function to Opener.
type OpenerFunc func(ctx context.Context, u *url.URL) (Transport, error)

// OpenTransport calls f.
func (f OpenerFunc) OpenTransport(ctx context.Context, u *url.URL) (Transport, error) {
	return f(ctx, u)
}

// Mux maps URL schemes to openers. Its zero value is an empty, usable Mux;
// there is no global one and no registration in init(): a program builds
// the Mux it needs (package busfx and the open helper of busway build one
// with "chan", "nats" and "kafka"). Safe for concurrent use.
type Mux struct {
	mu      sync.RWMutex
	openers map[string]Opener
}

// Register maps scheme (lower case letters, digits, '+', '-', '.') to o. It
// returns an error wrapping ErrInvalidOptions for an empty or malformed
// scheme, a nil opener, or a scheme that is already registered.
func (m *Mux) Register(scheme string, o Opener) error {
	if scheme == "" || strings.ToLower(scheme) != scheme || strings.ContainsFunc(scheme, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.')
	}) {
		return fmt.Errorf("%w: scheme %q must be non-empty lower-case letters, digits, '+', '-' or '.'", ErrInvalidOptions, scheme)
	}
	if o == nil {
		return fmt.Errorf("%w: nil opener for scheme %q", ErrInvalidOptions, scheme)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.openers[scheme]; dup {
		return fmt.Errorf("%w: scheme %q is already registered", ErrInvalidOptions, scheme)
	}
	if m.openers == nil {
		m.openers = make(map[string]Opener)
	}
	m.openers[scheme] = o
	return nil
}

// Schemes returns the registered schemes, sorted.
func (m *Mux) Schemes() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	s := make([]string, 0, len(m.openers))
	for k := range m.openers {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// Open parses rawURL and opens the transport its scheme names. A malformed
// URL gives a *URLError wrapping ErrInvalidURL, an unregistered scheme one
// wrapping ErrUnknownScheme; the opener's own errors name the offending part.
func (m *Mux) Open(ctx context.Context, rawURL string) (Transport, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	t, err := m.OpenURL(ctx, u)
	var ue *URLError
	if errors.As(err, &ue) {
		ue.URL = redactRaw(rawURL) // as the caller wrote it, not as net/url re-renders it
	}
	return t, err
}

// ParseURL parses a transport URL as Open does, with errors that say what
// is wrong and never show its credentials: a *URLError wrapping
// ErrInvalidURL for an empty URL, white space around it, a fragment, a
// URL net/url cannot parse, no scheme, or credentials with an unescaped
// '/', '?' or '#' (which net/url would split into a host, a path or a
// query, showing pieces of the secret in its errors and sending them to a
// DNS lookup).
func ParseURL(rawURL string) (*url.URL, error) {
	trimmed := strings.TrimSpace(rawURL)
	if trimmed == "" {
		return nil, &URLError{URL: rawURL, Part: "url", Err: fmt.Errorf("%w: empty (want e.g. chan://, nats://host:4222, kafka://host:9092)", ErrInvalidURL)}
	}
	if trimmed != rawURL {
		// net/url's own errors for these ("first path segment in URL
		// cannot contain colon", "invalid port") do not say what is wrong.
		return nil, &URLError{URL: RedactRaw(rawURL), Part: "url", Err: fmt.Errorf("%w: white space before or after it (a value read from a file with its newline?)", ErrInvalidURL)}
	}
	if i := strings.IndexByte(rawURL, '#'); i >= 0 {
		// No transport URL has a fragment: this '#' is most likely one of
		// a password or token, unescaped, which net/url would take for
		// the fragment's start, and what comes before it for the host.
		return nil, &URLError{URL: RedactRaw(rawURL), Part: "url", Err: fmt.Errorf(
			"%w: '#' at %d would start a fragment, which a transport URL has not (a '#' in a user name, password or token is written %%23)", ErrInvalidURL, i)}
	}
	u, err := url.Parse(rawURL)
	switch {
	case err != nil && looseCredentials(rawURL):
		// net/url's error would quote a piece of the credentials.
		return nil, &URLError{URL: RedactRaw(rawURL), Part: "url", Err: fmt.Errorf("%w: %s", ErrInvalidURL, credentialsHint)}
	case err != nil:
		return nil, &URLError{URL: RedactRaw(rawURL), Part: "url", Err: fmt.Errorf("%w: %v", ErrInvalidURL, unwrapURLErr(err))}
	case misplacedAt(u):
		return nil, &URLError{URL: RedactRaw(rawURL), Part: "userinfo", Err: fmt.Errorf("%w: %s", ErrInvalidURL, credentialsHint)}
	case u.Scheme == "":
		return nil, &URLError{URL: RedactRaw(rawURL), Part: "scheme", Err: fmt.Errorf("%w: no scheme (want e.g. chan://, nats://host:4222, kafka://host:9092)", ErrInvalidURL)}
	}
	return u, nil
}

const credentialsHint = "the user name, password or token before its '@' has a character to percent-encode: write '/' as %2F, '?' as %3F, '#' as %23, '%' as %25"

// looseCredentials reports whether raw has an '@' after its "//": user
// information, maybe with characters that end it early for net/url.
func looseCredentials(raw string) bool {
	i := strings.Index(raw, "//")
	return i >= 0 && strings.IndexByte(raw[i:], '@') >= 0
}

// misplacedAt reports whether net/url found no user information in u but
// an '@' in its host, path or a query option's name: credentials whose
// unescaped '/' or '?' ended the authority before their '@'.
func misplacedAt(u *url.URL) bool {
	if u.User != nil || u.Opaque != "" {
		return false
	}
	if strings.Contains(u.Host, "@") || strings.Contains(u.Path, "@") {
		return true
	}
	for pair := range strings.SplitSeq(u.RawQuery, "&") {
		if name, _, _ := strings.Cut(pair, "="); strings.Contains(name, "@") {
			return true
		}
	}
	return false
}

// OpenURL opens the transport u's scheme names.
func (m *Mux) OpenURL(ctx context.Context, u *url.URL) (Transport, error) {
	m.mu.RLock()
	o, ok := m.openers[u.Scheme]
	m.mu.RUnlock()
	if !ok {
		return nil, &URLError{URL: Redact(u), Part: "scheme", Err: fmt.Errorf("%w %q (registered: %s)", ErrUnknownScheme, u.Scheme, strings.Join(m.Schemes(), ", "))}
	}
	return o.OpenTransport(ctx, u)
}

// URLError reports what was wrong with a transport URL. URL has its password
// redacted; Part names the offending part ("scheme", "host", "query option
// \"acks\"", ...).
type URLError struct {
	URL  string
	Part string
	Err  error
}

func (e *URLError) Error() string {
	return fmt.Sprintf("busway: transport URL %q: %s: %v", e.URL, e.Part, e.Err)
}
func (e *URLError) Unwrap() error { return e.Err }

// Redact returns u as a string for errors and logs, with its credentials
// replaced by "xxxxx": the password; the user name when there is no
// password (nats://TOKEN@host carries a token there); the value of every
// query option whose name says it is secret (SecretOption); the user part
// of an opaque URL (nats:TOKEN@host). The fragment, where no option lives
// but pasted secrets may, is dropped. A URL with a scheme and an empty
// host keeps its "//" ("chan://?buffer=64", which net/url would render
// "chan:?buffer=64").
func Redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	if c.User != nil {
		if _, ok := c.User.Password(); ok {
			c.User = url.UserPassword(c.User.Username(), "xxxxx")
		} else {
			c.User = url.User("xxxxx")
		}
	}
	if at := strings.LastIndex(c.Opaque, "@"); at >= 0 {
		c.Opaque = "xxxxx" + c.Opaque[at:]
	}
	if c.RawQuery != "" {
		c.RawQuery = redactQuery(c.RawQuery)
	}
	c.Fragment, c.RawFragment = "", ""
	s := c.String()
	if c.Scheme != "" && c.Opaque == "" && c.Host == "" && !c.OmitHost && !strings.HasPrefix(s, c.Scheme+"://") {
		s = c.Scheme + "://" + strings.TrimPrefix(s, c.Scheme+":")
	}
	return s
}

// SecretOption reports whether a URL query option of this name holds a
// secret whose value Redact hides: its name contains "token", "password",
// "passwd", "secret" or "credential", or is "pass" or ends in "_pass".
func SecretOption(name string) bool {
	n := strings.ToLower(name)
	for _, w := range []string{"token", "password", "passwd", "secret", "credential"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return n == "pass" || strings.HasSuffix(n, "_pass") || strings.HasPrefix(n, "pass_")
}

// redactQuery hides the values of secret options in a raw query, keeping
// the rest (and its order) as written. A ';' is read both ways: busway
// rejects it as a separator, but the error echoes the query, so a secret
// after one is hidden ("n=1;token=..."), and so is what follows one in a
// secret's value ("token=ab;cd": a part without '=' continues the value).
func redactQuery(raw string) string {
	pairs := strings.Split(raw, "&")
	for i, pair := range pairs {
		parts := strings.Split(pair, ";")
		secret := false
		for j, p := range parts {
			k, _, hasValue := strings.Cut(p, "=")
			if !hasValue {
				if secret && p != "" {
					parts[j] = "xxxxx"
				}
				continue
			}
			name, err := url.QueryUnescape(k)
			if err != nil {
				name = k
			}
			if secret = SecretOption(name); secret {
				parts[j] = k + "=xxxxx"
			}
		}
		pairs[i] = strings.Join(parts, ";")
	}
	return strings.Join(pairs, "&")
}

// RedactRaw is Redact for a URL string that may not parse.
func RedactRaw(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err == nil && !misplacedAt(u) && strings.IndexByte(raw, '#') < 0:
		return Redact(u)
	case looseCredentials(raw):
		// Where net/url cannot tell (it split the credentials at a '/',
		// '?' or '#'), everything up to the last '@' may be secret.
		i := strings.Index(raw, "//")
		return raw[:i+2] + "xxxxx" + raw[i+strings.LastIndexByte(raw[i:], '@'):]
	}
	return redactRaw(raw)
}

// redactRaw returns raw, as written, with the password of its user
// information (or a user name without password) replaced by "xxxxx", the
// values of secret query options hidden and any fragment dropped. It
// works on URLs that do not parse, which may still hold credentials.
func redactRaw(raw string) string {
	if i := strings.IndexByte(raw, '#'); i >= 0 {
		raw = raw[:i]
	}
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i+1] + redactQuery(raw[i+1:])
	}
	i := strings.Index(raw, "://")
	if i < 0 {
		if at := strings.LastIndex(raw, "@"); at >= 0 { // nats:TOKEN@host
			if colon := strings.IndexByte(raw, ':'); colon >= 0 && colon < at {
				return raw[:colon+1] + "xxxxx" + raw[at:]
			}
			return "xxxxx" + raw[at:]
		}
		return raw
	}
	rest := raw[i+3:]
	authority := rest
	if end := strings.IndexAny(rest, "/?#"); end >= 0 {
		authority = rest[:end]
	}
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return raw
	}
	user := "xxxxx"
	if colon := strings.IndexByte(authority[:at], ':'); colon >= 0 {
		user = authority[:colon] + ":xxxxx"
	}
	return raw[:i+3] + user + rest[at:]
}

func unwrapURLErr(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// Query reads a URL's query options for an opener, remembering the first
// bad value and which options it did not read, so the opener can reject
// unknown options by name:
//
//	q := transport.NewQuery(u)
//	acks := q.String("acks", "all")
//	wait := q.Duration("max_wait", 500*time.Millisecond)
//	if err := q.Err(); err != nil { ... } // bad value or unknown option
type Query struct {
	u    *url.URL
	vals url.Values
	seen map[string]bool
	err  error
}

// NewQuery starts reading u's query options. A pair that does not decode
// (a bad %-escape, or ';' where '&' separates options) is Err's error:
// url.URL.Query drops such a pair without a word, which would leave an
// option the user set at its default.
func NewQuery(u *url.URL) *Query {
	q := &Query{u: u, vals: url.Values{}, seen: make(map[string]bool)}
	for pair := range strings.SplitSeq(u.RawQuery, "&") {
		if pair == "" {
			continue
		}
		rawName, rawValue, _ := strings.Cut(pair, "=")
		name, errName := url.QueryUnescape(rawName)
		value, errValue := url.QueryUnescape(rawValue)
		switch {
		case errName != nil:
			q.Fail(rawName, fmt.Errorf("%w: its name does not decode: %v (write a literal %% as %%25)", ErrInvalidURL, errName))
		case strings.Contains(pair, ";"):
			q.Fail(name, fmt.Errorf("%w: ';' in %q: options are separated by '&' (write a literal ; as %%3B)", ErrInvalidURL, redactQuery(pair)))
		case errValue != nil && SecretOption(name):
			q.Fail(name, fmt.Errorf("%w: its value does not decode (a bad %%-escape; write a literal %% as %%25)", ErrInvalidURL))
		case errValue != nil:
			q.Fail(name, fmt.Errorf("%w: its value does not decode: %v (write a literal %% as %%25)", ErrInvalidURL, errValue))
		default:
			q.vals[name] = append(q.vals[name], value)
		}
	}
	return q
}

func (q *Query) get(name string) (string, bool) {
	q.seen[name] = true
	vs, ok := q.vals[name]
	if !ok || len(vs) == 0 {
		return "", false
	}
	if len(vs) > 1 && q.err == nil {
		q.err = q.fail(name, fmt.Errorf("%w: given %d times", ErrInvalidURL, len(vs)))
	}
	return vs[len(vs)-1], true
}

func (q *Query) fail(name string, err error) error {
	return &URLError{URL: Redact(q.u), Part: fmt.Sprintf("query option %q", name), Err: err}
}

// Has reports whether the option is present, and marks it read.
func (q *Query) Has(name string) bool {
	_, ok := q.get(name)
	return ok
}

// String returns the option's value, or def when absent.
func (q *Query) String(name, def string) string {
	if v, ok := q.get(name); ok {
		return v
	}
	return def
}

// Int returns the option as an integer, or def when absent.
func (q *Query) Int(name string, def int) int {
	v, ok := q.get(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil && q.err == nil {
		q.err = q.fail(name, fmt.Errorf("%w: %q is not an integer", ErrInvalidURL, v))
	}
	if err != nil {
		return def
	}
	return n
}

// Int64 returns the option as a 64-bit integer, or def when absent.
func (q *Query) Int64(name string, def int64) int64 {
	v, ok := q.get(name)
	if !ok {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		if q.err == nil {
			q.err = q.fail(name, fmt.Errorf("%w: %q is not an integer", ErrInvalidURL, v))
		}
		return def
	}
	return n
}

// Bool returns the option as a boolean (1, t, true, 0, f, false, ...), or
// def when absent.
func (q *Query) Bool(name string, def bool) bool {
	v, ok := q.get(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		if q.err == nil {
			q.err = q.fail(name, fmt.Errorf("%w: %q is not a boolean", ErrInvalidURL, v))
		}
		return def
	}
	return b
}

// Duration returns the option as a time.Duration ("500ms", "2s"), or def
// when absent.
func (q *Query) Duration(name string, def time.Duration) time.Duration {
	v, ok := q.get(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if q.err == nil {
			q.err = q.fail(name, fmt.Errorf("%w: %q is not a duration (e.g. 500ms, 2s)", ErrInvalidURL, v))
		}
		return def
	}
	return d
}

// Enum returns the option's value, which must be one of allowed, or def
// when absent.
func (q *Query) Enum(name, def string, allowed ...string) string {
	v, ok := q.get(name)
	if !ok {
		return def
	}
	if !slices.Contains(allowed, v) {
		if q.err == nil {
			q.err = q.fail(name, fmt.Errorf("%w: %q is not one of %s", ErrInvalidURL, v, strings.Join(allowed, ", ")))
		}
		return def
	}
	return v
}

// Fail records an error about an option's value that the opener found
// itself (the first error wins).
func (q *Query) Fail(name string, err error) {
	if q.err == nil {
		q.err = q.fail(name, err)
	}
}

// Err returns the first bad value, else an error naming the options that
// were given but never read (unknown options), else nil.
func (q *Query) Err() error {
	if q.err != nil {
		return q.err
	}
	var unknown []string
	for k := range q.vals {
		if !q.seen[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return &URLError{URL: Redact(q.u), Part: fmt.Sprintf("query option %q", unknown[0]),
			Err: fmt.Errorf("%w: unknown option(s) %s", ErrInvalidURL, strings.Join(unknown, ", "))}
	}
	return nil
}
