package nats

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
// the URL has no TLS option.
func TestURLOpenerDefaults(t *testing.T) {
	own := &tls.Config{ServerName: "own", MinVersion: tls.VersionTLS12}
	log := slog.New(slog.DiscardHandler)
	base := Config{Servers: []string{"nats://ignored:1"}, Stream: "BASE", AckWait: time.Minute, Provision: ProvisionBind,
		Storage: StorageMemory, NakDelays: []time.Duration{time.Second}, Name: "base"}
	for _, c := range []struct {
		opener *URLOpener
		url    string
		ok     func(Config) bool
	}{
		{&URLOpener{Logger: log, TLS: own, Config: base}, "nats://h1,h2:4223?ack_wait=2s", func(c Config) bool {
			return len(c.Servers) == 2 && c.Servers[0] == "nats://h1:4222" && c.Stream == "BASE" && c.AckWait == 2*time.Second &&
				c.Provision == ProvisionBind && c.Storage == StorageMemory && len(c.NakDelays) == 1 && c.Name == "base" &&
				c.Logger == log && c.TLS == own
		}},
		{&URLOpener{Logger: log, TLS: own, Config: base}, "nats://h?provision=create&storage=file&nak_delay=1ms,2ms&stream=URL&tls=false", func(c Config) bool {
			return c.Provision == ProvisionCreate && c.Storage == StorageFile && len(c.NakDelays) == 2 && c.Stream == "URL" && c.TLS == nil
		}},
		{&URLOpener{}, "nats://h", func(c Config) bool {
			return c.Stream == "" && c.Logger == nil && c.TLS == nil && c.Provision == ProvisionCreate
		}},
	} {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		if cfg, err := c.opener.config(u); err != nil || !c.ok(cfg) {
			t.Errorf("%s: %+v, %v", c.url, cfg, err)
		}
	}
}

func TestOpenerConformance(t *testing.T) {
	transporttest.CheckOpener(t, transporttest.OpenerHarness{Opener: &URLOpener{}, Scheme: Scheme, Host: "127.0.0.1:4222",
		Bad: []transporttest.BadURL{
			{URL: "nats://127.0.0.1:99999", Part: "host"},
			{URL: "nats://embedded", Part: `"store_dir"`},
			{URL: "nats://u:s3cretpw@embedded?store_dir=/x", Part: "user"},
			{URL: "nats://h?storage=tape", Part: `"storage"`},
		}})
}
