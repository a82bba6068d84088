package nats

import (
	"context"
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
// carry.
type URLOpener struct {
	// Logger is Config.Logger of the transports it opens (nil: discard).
	Logger *slog.Logger
}

// OpenTransport parses u with ConfigFromURL and calls New.
func (o *URLOpener) OpenTransport(ctx context.Context, u *url.URL) (transport.Transport, error) {
	cfg, err := ConfigFromURL(u)
	if err != nil {
		return nil, err
	}
	cfg.Logger = o.Logger
	return New(ctx, cfg)
}

// urlShape is the shape of "nats://" URLs: servers (or "embedded") in the
// host part, no path.
var urlShape = transport.URLShape{Scheme: Scheme, Hosts: true, HostHint: "missing (want nats://host:4222 or nats://embedded?store_dir=...)",
	PathHint: "a nats URL has no path (the stream is the option stream=)"}

// ConfigFromURL parses a "nats" URL (see Opener) into a Config.
func ConfigFromURL(u *url.URL) (Config, error) {
	var cfg Config
	if err := transport.CheckURL(u, urlShape); err != nil {
		return cfg, err
	}
	bad := func(part string, format string, args ...any) error {
		return transport.InvalidURL(u, part, format, args...)
	}
	q := transport.NewQuery(u)
	embedded := u.Host == "embedded"
	if embedded {
		if u.User != nil {
			return cfg, bad("user", "the embedded server takes no credentials")
		}
		e := &EmbeddedConfig{StoreDir: q.String("store_dir", "")}
		e.Port = q.Int("port", 0)
		mp := q.Int64("max_payload", 0)
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
	cfg.Stream = q.String("stream", "")
	cfg.SubjectPrefix = q.String("prefix", "")
	if q.Enum("provision", "create", "create", "bind") == "bind" {
		cfg.Provision = ProvisionBind
	}
	if q.Enum("storage", "file", "file", "memory") == "memory" {
		cfg.Storage = StorageMemory
	}
	cfg.Replicas = q.Int("replicas", 0)
	cfg.MaxAge = q.Duration("max_age", 0)
	cfg.Duplicates = q.Duration("duplicates", 0)
	cfg.AckWait = q.Duration("ack_wait", 0)
	cfg.MaxDeliver = q.Int("max_deliver", 0)
	cfg.MaxAckPending = q.Int("max_ack_pending", 0)
	cfg.PublishTimeout = q.Duration("publish_timeout", 0)
	cfg.ConnectTimeout = q.Duration("connect_timeout", 0)
	cfg.Name = q.String("name", "")
	if tok := q.String("token", ""); tok != "" {
		cfg.Token = tok
	}
	cfg.CredsFile = q.String("creds", "")
	cfg.NKeySeedFile = q.String("nkey", "")
	if nd := q.String("nak_delay", ""); nd != "" {
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
	}
	// Check the values now, so that the error names the URL.
	if _, err := cfg.settings(); err != nil {
		return cfg, transport.InvalidURL(u, "options", "%w", err)
	}
	return cfg, nil
}
