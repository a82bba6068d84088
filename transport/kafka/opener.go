package kafka

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"github.com/busway/busway/internal/tlsfiles"
	"github.com/busway/busway/transport"
)

// Scheme is the URL scheme of this transport: "kafka".
const Scheme = "kafka"

// Opener returns the transport.Opener of "kafka://" URLs, for a
// transport.Mux:
//
//	kafka://user:password@host1:9092,host2:9092?sasl=scram-sha-512&tls=true&partitions=3
//
// The host part lists the bootstrap brokers (port 9092 when omitted).
// Options (each maps to the Config field of the same meaning and default):
// client_id, tls (true: TLS with the system roots), tls_ca (PEM file of the
// certificates to trust instead; implies tls), tls_cert and tls_key (PEM
// files of a client certificate), tls_insecure_skip_verify,
// sasl (plain, scram-sha-256, scram-sha-512; credentials from the URL's user
// information), create_topics (default true), partitions,
// replication_factor, acks (all, leader, none), compression (none, gzip,
// snappy, lz4, zstd), max_message_bytes, publish_retries, commit_interval,
// commit_every, retry_backoff, retry_backoff_max, max_attempts, drain_timeout,
// session_timeout, heartbeat_interval, rebalance_timeout, fetch_max_bytes,
// fetch_max_wait, dial_timeout, request_timeout. An unknown option, or a bad value, is an
// error naming it.
func Opener() transport.Opener { return &URLOpener{} }

// URLOpener opens "kafka" URLs (see Opener) with settings a URL cannot
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
	// which then decide. Default nil: plaintext unless the URL asks for TLS.
	TLS *tls.Config
	// Config is the defaults of the transports it opens: the URL's
	// brokers and options override its fields. Its Logger and TLS give way
	// to the fields above when those are set. Default: Config's own.
	Config Config
}

// OpenTransport parses u over o.Config (see ConfigFromURL) and calls New.
func (o *URLOpener) OpenTransport(ctx context.Context, u *url.URL) (transport.Transport, error) {
	return transport.OpenConfig(ctx, u, o.config, New)
}

// config is the Config that OpenTransport opens u with: the URL's brokers and
// options over o.Config, whose Logger and TLS o's own replace where set.
func (o *URLOpener) config(u *url.URL) (Config, error) {
	base := o.Config
	base.Logger, base.TLS = cmp.Or(o.Logger, base.Logger), cmp.Or(o.TLS, base.TLS)
	return configFromURL(u, base)
}

// urlShape is the shape of "kafka://" URLs: brokers in the host part, no path.
var urlShape = transport.URLShape{Scheme: Scheme, Hosts: true, HostHint: "no brokers (want kafka://host:9092[,host2:9092])"}

// ConfigFromURL parses a "kafka://" URL (see Opener) into a Config.
func ConfigFromURL(u *url.URL) (Config, error) { return configFromURL(u, Config{}) }

// configFromURL is ConfigFromURL over base: what the URL leaves unset keeps
// base's value.
func configFromURL(u *url.URL, base Config) (Config, error) {
	if err := transport.CheckURL(u, urlShape); err != nil {
		return Config{}, err
	}
	cfg := base
	cfg.Brokers = nil
	for _, b := range strings.Split(u.Host, ",") {
		if strings.TrimSpace(b) == "" {
			return Config{}, transport.InvalidURL(u, "host", "empty broker in %q", u.Host)
		}
		cfg.Brokers = append(cfg.Brokers, b)
	}
	q := transport.NewQuery(u)
	cfg.ClientID = q.String("client_id", cfg.ClientID)
	ca, cert, key := q.String("tls_ca", ""), q.String("tls_cert", ""), q.String("tls_key", "")
	if q.Bool("tls", false) || ca != "" || cert != "" || key != "" {
		tc, opt, err := tlsfiles.Load(ca, cert, key)
		if err != nil {
			q.Fail(opt, fmt.Errorf("%w: %v", transport.ErrInvalidURL, err))
		} else {
			tc.InsecureSkipVerify = q.Bool("tls_insecure_skip_verify", false) //nolint:gosec // opt-in by URL option
			cfg.TLS = tc
		}
	} else {
		if q.Has("tls_insecure_skip_verify") {
			q.Fail("tls_insecure_skip_verify", fmt.Errorf("%w: needs tls=true", transport.ErrInvalidURL))
		}
		if q.Has("tls") { // tls=false
			cfg.TLS = nil
		}
	}
	mech := q.Enum("sasl", "", "plain", "scram-sha-256", "scram-sha-512", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
	if mech != "" {
		cfg.SASL.Mechanism = strings.ToUpper(mech)
		if u.User == nil || u.User.Username() == "" {
			q.Fail("sasl", fmt.Errorf("%w: sasl=%s needs user:password@ in the URL", transport.ErrInvalidURL, mech))
		} else {
			cfg.SASL.Username = u.User.Username()
			cfg.SASL.Password, _ = u.User.Password()
		}
	} else if u.User != nil && cfg.SASL.Mechanism != "" { // the opener's Config names the mechanism
		cfg.SASL.Username = u.User.Username()
		cfg.SASL.Password, _ = u.User.Password()
	} else if u.User != nil {
		q.Fail("sasl", fmt.Errorf("%w: the URL has credentials but no sasl option (plain, scram-sha-256, scram-sha-512)", transport.ErrInvalidURL))
	}
	cfg.Topics.Disable = !q.Bool("create_topics", !cfg.Topics.Disable)
	cfg.Topics.Partitions = q.Int("partitions", cfg.Topics.Partitions)
	cfg.Topics.ReplicationFactor = q.Int("replication_factor", cfg.Topics.ReplicationFactor)
	switch q.Enum("acks", "", "all", "leader", "none", "-1", "1", "0") {
	case "all", "-1":
		cfg.Acks = AcksAll
	case "leader", "1":
		cfg.Acks = AcksLeader
	case "none", "0":
		cfg.Acks = AcksNone
	}
	cfg.Compression = q.Enum("compression", cfg.Compression, "none", "gzip", "snappy", "lz4", "zstd")
	cfg.MaxMessageBytes = q.Int("max_message_bytes", cfg.MaxMessageBytes)
	cfg.PublishRetries = q.Int("publish_retries", cfg.PublishRetries)
	cfg.CommitInterval = q.Duration("commit_interval", cfg.CommitInterval)
	cfg.CommitEvery = q.Int("commit_every", cfg.CommitEvery)
	cfg.RetryBackoff = q.Duration("retry_backoff", cfg.RetryBackoff)
	cfg.RetryBackoffMax = q.Duration("retry_backoff_max", cfg.RetryBackoffMax)
	cfg.MaxAttempts = q.Int("max_attempts", cfg.MaxAttempts)
	cfg.DrainTimeout = q.Duration("drain_timeout", cfg.DrainTimeout)
	cfg.SessionTimeout = q.Duration("session_timeout", cfg.SessionTimeout)
	cfg.HeartbeatInterval = q.Duration("heartbeat_interval", cfg.HeartbeatInterval)
	cfg.RebalanceTimeout = q.Duration("rebalance_timeout", cfg.RebalanceTimeout)
	cfg.FetchMaxBytes = q.Int("fetch_max_bytes", cfg.FetchMaxBytes)
	cfg.FetchMaxWait = q.Duration("fetch_max_wait", cfg.FetchMaxWait)
	cfg.DialTimeout = q.Duration("dial_timeout", cfg.DialTimeout)
	cfg.RequestTimeout = q.Duration("request_timeout", cfg.RequestTimeout)
	if err := q.Err(); err != nil {
		return Config{}, err
	}
	if _, err := cfg.resolve(); err != nil {
		return Config{}, transport.InvalidURL(u, "config", "%w", err)
	}
	return cfg, nil
}
