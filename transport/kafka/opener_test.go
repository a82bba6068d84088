package kafka

import (
	"crypto/tls"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/busway/busway/transport/transporttest"
)

// TestURLOpenerDefaults: URLOpener.Config holds the defaults that a URL's
// options override; its Logger and TLS reach the Config, TLS only where
// the URL says nothing about TLS.
func TestURLOpenerDefaults(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	own := &tls.Config{ServerName: "own", MinVersion: tls.VersionTLS12}
	o := &URLOpener{Logger: log, TLS: own, Config: Config{
		Brokers: []string{"ignored:1"}, ClientID: "base", RetryBackoff: time.Second, RetryBackoffMax: time.Minute,
		Acks: AcksLeader, Topics: Provisioning{Disable: true, Partitions: 4}, Compression: "gzip",
		SASL: SASL{Mechanism: "PLAIN"},
	}}
	parse := func(raw string) Config {
		t.Helper()
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := o.config(u)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		return cfg
	}
	c := parse("kafka://alice:pw@h1,h2:9093?retry_backoff=2s")
	if len(c.Brokers) != 2 || c.Brokers[0] != "h1" || c.ClientID != "base" || c.RetryBackoff != 2*time.Second ||
		c.RetryBackoffMax != time.Minute || c.Acks != AcksLeader || !c.Topics.Disable || c.Topics.Partitions != 4 ||
		c.Compression != "gzip" || c.SASL != (SASL{"PLAIN", "alice", "pw"}) || c.Logger != log || c.TLS != own {
		t.Errorf("defaults not kept or URL not applied: %+v", c)
	}
	c = parse("kafka://bob:x@h?acks=all&create_topics=true&compression=none&client_id=url&tls=false")
	if c.Acks != AcksAll || c.Topics.Disable || c.Compression != "none" || c.ClientID != "url" || c.TLS != nil {
		t.Errorf("URL options did not override the defaults: %+v", c)
	}
	if c := parse("kafka://bob:x@h?tls=true"); c.TLS == own || c.TLS == nil {
		t.Errorf("tls=true in the URL: TLS %v, want the URL's own", c.TLS)
	}
	// The zero opener is Opener's: a URL without options is the zero Config but for its brokers.
	zero, err := (&URLOpener{}).config(&url.URL{Scheme: Scheme, Host: "h"})
	if err != nil || zero.ClientID != "" || zero.Logger != nil || zero.TLS != nil || zero.Acks != AcksAll {
		t.Errorf("zero URLOpener: %+v, %v", zero, err)
	}
}

func TestOpenerConformance(t *testing.T) {
	transporttest.CheckOpener(t, transporttest.OpenerHarness{Opener: &URLOpener{}, Scheme: Scheme, Host: "127.0.0.1:9092",
		Bad: []transporttest.BadURL{
			{URL: "kafka://a:1,,b:2", Part: "host"},
			{URL: "kafka://u:s3cretpw@h:9092", Part: `"sasl"`},
			{URL: "kafka://h?acks=some", Part: `"acks"`},
			{URL: "kafka://h?tls_insecure_skip_verify=true", Part: `"tls_insecure_skip_verify"`},
		}})
}
