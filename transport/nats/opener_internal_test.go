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
	log := slog.New(slog.DiscardHandler)
	own := &tls.Config{ServerName: "own", MinVersion: tls.VersionTLS12}
	o := &URLOpener{Logger: log, TLS: own, Config: Config{
		Servers: []string{"nats://ignored:1"}, Stream: "BASE", AckWait: time.Minute, Provision: ProvisionBind,
		Storage: StorageMemory, NakDelays: []time.Duration{time.Second}, Name: "base",
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
	c := parse("nats://h1,h2:4223?ack_wait=2s")
	if len(c.Servers) != 2 || c.Servers[0] != "nats://h1:4222" || c.Stream != "BASE" || c.AckWait != 2*time.Second ||
		c.Provision != ProvisionBind || c.Storage != StorageMemory || len(c.NakDelays) != 1 || c.Name != "base" ||
		c.Logger != log || c.TLS != own {
		t.Errorf("defaults not kept or URL not applied: %+v", c)
	}
	c = parse("nats://h?provision=create&storage=file&nak_delay=1ms,2ms&stream=URL&tls=false")
	if c.Provision != ProvisionCreate || c.Storage != StorageFile || len(c.NakDelays) != 2 || c.Stream != "URL" || c.TLS != nil {
		t.Errorf("URL options did not override the defaults: %+v", c)
	}
	zero, err := (&URLOpener{}).config(&url.URL{Scheme: Scheme, Host: "h"})
	if err != nil || zero.Stream != "" || zero.Logger != nil || zero.TLS != nil || zero.Provision != ProvisionCreate {
		t.Errorf("zero URLOpener: %+v, %v", zero, err)
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
