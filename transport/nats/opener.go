package nats

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/busway/busway/internal/tlsfiles"
	"github.com/busway/busway/transport"
)

// Opener returns the opener of "nats" URLs for a transport.Mux:
//
//	nats://[user:password@]host[:port][,host2[:port]...]?option=value&...
//	nats://token@host:4222
//	nats://embedded?store_dir=/var/lib/app/nats[&port=4222]
//
// Options (each maps to the Config field of the same meaning):
//
//	stream, prefix, provision (create|bind), storage (file|memory),
//	replicas, max_age, duplicates, ack_wait, max_deliver, max_ack_pending,
//	nak_delay (comma-separated durations), publish_timeout,
//	connect_timeout, name, token, creds (file), nkey (seed file),
//	tls (bool), tls_ca, tls_cert, tls_key (files);
//	with host "embedded": store_dir (required), port, max_payload.
//
// An unknown option, a bad value or host gives a *transport.URLError
// naming it. The transport logs nothing; use URLOpener to give it a
// logger.
func Opener() transport.Opener { return &URLOpener{} }

// URLOpener opens "nats" URLs (see Opener) with settings a URL cannot
// carry. Its zero value opens URLs as Opener's does. Every transport has
// an opener of this shape (Logger, TLS, Config), so that busway.NewMux can
// give them all the same logger.
type URLOpener struct {
	// Logger is Config.Logger of the transports it opens. Default nil:
	// discard.
	Logger *slog.Logger
	// TLS is Config.TLS of the transports it opens, for what a URL cannot
	// say (a tls.Config built in code, a GetClientCertificate callback),
	// unless the URL has TLS options (tls, tls_ca, tls_cert, tls_key),
	// which then decide. Default nil.
	TLS *tls.Config
	// Config is the defaults of the transports it opens: the URL's
	// servers and options override its fields. Its Logger and TLS give way
	// to the fields above when those are set. Default: Config's own.
	Config Config
}

// OpenTransport parses u over o.Config (see ConfigFromURL) and calls New.
func (o *URLOpener) OpenTransport(ctx context.Context, u *url.URL) (transport.Transport, error) {
	return transport.OpenConfig(ctx, u, o.config, New)
}

// config is the Config that OpenTransport opens u with: the URL's servers and
// options over o.Config, whose Logger and TLS o's own replace where set.
func (o *URLOpener) config(u *url.URL) (Config, error) {
	base := o.Config
	base.Logger, base.TLS = cmp.Or(o.Logger, base.Logger), cmp.Or(o.TLS, base.TLS)
	return configFromURL(u, base)
}

// urlShape is the shape of "nats://" URLs: servers (or "embedded") in the
// host part, no path.
var urlShape = transport.URLShape{Scheme: Scheme, Hosts: true, HostHint: "missing (want nats://host:4222 or nats://embedded?store_dir=...)",
	PathHint: "a nats URL has no path (the stream is the option stream=)"}

// ConfigFromURL parses a "nats" URL (see Opener) into a Config.
func ConfigFromURL(u *url.URL) (Config, error) { return configFromURL(u, Config{}) }

// configFromURL is ConfigFromURL over base: what the URL leaves unset keeps
// base's value.
func configFromURL(u *url.URL, base Config) (Config, error) {
	if err := transport.CheckURL(u, urlShape); err != nil {
		return Config{}, err
	}
	cfg := base
	cfg.Servers, cfg.Embedded = nil, nil
	bad := func(part string, format string, args ...any) error {
		return transport.InvalidURL(u, part, format, args...)
	}
	q := transport.NewQuery(u)
	embedded := u.Host == "embedded"
	if embedded {
		if u.User != nil {
			return cfg, bad("user", "the embedded server takes no credentials")
		}
		e := new(EmbeddedConfig)
		if base.Embedded != nil {
			*e = *base.Embedded
		}
		e.StoreDir = q.String("store_dir", e.StoreDir)
		e.Port = q.Int("port", e.Port)
		mp := q.Int64("max_payload", int64(e.MaxPayload))
		if mp < 0 || mp > 64<<20 {
			q.Fail("max_payload", fmt.Errorf("%w: %d is not between 1 and 64 MiB", transport.ErrInvalidURL, mp))
		}
		e.MaxPayload = int32(mp)
		if e.StoreDir == "" && q.Err() == nil {
			return cfg, bad(`query option "store_dir"`, "required with nats://embedded (where JetStream keeps its files)")
		}
		cfg.Embedded = e
	} else {
		for i, h := range strings.Split(u.Host, ",") {
			host, port, err := net.SplitHostPort(h)
			if err != nil {
				host, port = h, "4222"
			}
			if host == "" {
				return cfg, bad("host", "server #%d %q has no host name", i+1, h)
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return cfg, bad("host", "server #%d %q: port %q is not 1-65535", i+1, h, port)
			}
			cfg.Servers = append(cfg.Servers, "nats://"+net.JoinHostPort(host, port))
		}
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				cfg.User, cfg.Password = u.User.Username(), pw
			} else {
				cfg.Token = u.User.Username()
			}
		}
	}
	cfg.Stream = q.String("stream", cfg.Stream)
	cfg.SubjectPrefix = q.String("prefix", cfg.SubjectPrefix)
	switch q.Enum("provision", "", "create", "bind") {
	case "create":
		cfg.Provision = ProvisionCreate
	case "bind":
		cfg.Provision = ProvisionBind
	}
	switch q.Enum("storage", "", "file", "memory") {
	case "file":
		cfg.Storage = StorageFile
	case "memory":
		cfg.Storage = StorageMemory
	}
	cfg.Replicas = q.Int("replicas", cfg.Replicas)
	cfg.MaxAge = q.Duration("max_age", cfg.MaxAge)
	cfg.Duplicates = q.Duration("duplicates", cfg.Duplicates)
	cfg.AckWait = q.Duration("ack_wait", cfg.AckWait)
	cfg.MaxDeliver = q.Int("max_deliver", cfg.MaxDeliver)
	cfg.MaxAckPending = q.Int("max_ack_pending", cfg.MaxAckPending)
	cfg.PublishTimeout = q.Duration("publish_timeout", cfg.PublishTimeout)
	cfg.ConnectTimeout = q.Duration("connect_timeout", cfg.ConnectTimeout)
	cfg.Name = q.String("name", cfg.Name)
	if tok := q.String("token", ""); tok != "" {
		cfg.Token = tok
	}
	cfg.CredsFile = q.String("creds", cfg.CredsFile)
	cfg.NKeySeedFile = q.String("nkey", cfg.NKeySeedFile)
	if nd := q.String("nak_delay", ""); nd != "" {
		cfg.NakDelays = nil
		for s := range strings.SplitSeq(nd, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(s))
			if err != nil || d < 0 {
				q.Fail("nak_delay", fmt.Errorf("%w: %q is not a duration (e.g. 100ms,1s,5s)", transport.ErrInvalidURL, s))
				break
			}
			cfg.NakDelays = append(cfg.NakDelays, d)
		}
	}
	useTLS := q.Bool("tls", false)
	ca, cert, key := q.String("tls_ca", ""), q.String("tls_cert", ""), q.String("tls_key", "")
	if err := q.Err(); err != nil {
		return cfg, err
	}
	if useTLS || ca != "" || cert != "" || key != "" {
		tc, opt, err := tlsfiles.Load(ca, cert, key)
		if err != nil {
			return cfg, transport.InvalidURL(u, fmt.Sprintf("query option %q", opt), "%v", err)
		}
		cfg.TLS = tc
	} else if q.Has("tls") { // tls=false
		cfg.TLS = nil
	}
	// Check the values now, so that the error names the URL.
	if _, err := cfg.settings(); err != nil {
		return cfg, transport.InvalidURL(u, "options", "%w", err)
	}
	return cfg, nil
}
