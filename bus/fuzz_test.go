package bus_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

// FuzzDecodeEnvelope feeds arbitrary headers and bodies to DecodeEnvelope
// and Decode: they never panic, every error says what was wrong (and is
// permanent, for Decode), and what decodes survives a re-encode unchanged.
// The seed corpus runs in every go test; go test -fuzz FuzzDecodeEnvelope
// explores further.
func FuzzDecodeEnvelope(f *testing.F) {
	valid := []string{"0190163d-8694-739b-aea5-966c26f8ad91", "OrderCreated", "orders-svc", "1.0", "2026-11-28T11:08:16.123456789Z", "k1", "application/json", "", "", "ce_tenant: acme"}
	seed := func(s []string, body string) {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], []byte(body))
	}
	seed(valid, `{"id":"42","amount":7}`)
	seed([]string{"A234-1234-1234", "OrderCreated", "/mycontext", "1.0", "2018-04-05T17:31:00+02:00", "", "application/json; charset=utf-8", "", "key", ""}, `{"id":"7"}`)
	seed([]string{"", "", "", "", "", "", "", "raw-id", "raw-key", ""}, `{"id":"9"}`)
	seed([]string{"", "", "", "", "", "", "", "", "", ""}, ``)
	seed([]string{"x", "OrderCreated", "s", "1.0", "yesterday", "", "", "", "", ""}, `{}`)
	seed([]string{"x", "OrderCreated", "s", "0.3", "", "", "", "", "", ""}, `{}`)
	seed([]string{"x", "OrderCreated", "s", "1.0", "", "", "application/protobuf", "", "", ""}, "\x08\x96\x01")
	seed([]string{"x", "OrderCreated", "s", "1.0", "", "", "application/json", "", "", ""}, `{"amount":"seven"}`)
	seed([]string{"", "", "", "", "", "", "application/cloudevents+json", "", "", ""}, `{"specversion":"1.0","id":"1","type":"OrderCreated","data":{}}`)
	seed([]string{"x", "OrderCreated", "s", "1.0", "", "", "", "", "", "content-type: text/plain\nce_id: y"}, "\xff\xfe")
	seed([]string{"x", "OrderCreated", "s", "1.0", "9999-12-31T23:59:59.999999999-23:59", "", "", "", "", ""}, `null`)
	seed([]string{strings.Repeat("i", 300), "Order\x00Created", "s", "1.10", "2026-01-01T00:00:00Z", "", "", "", "", ""}, `[]`)

	f.Fuzz(func(t *testing.T, id, typ, source, spec, ts, pkey, ctype, msgID, msgKey, extra string, body []byte) {
		h := map[string]string{}
		for line := range strings.SplitSeq(extra, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				h[k] = v
			}
		}
		for k, v := range map[string]string{
			transport.HeaderID: id, transport.HeaderType: typ, transport.HeaderSource: source, transport.HeaderSpecVersion: spec,
			transport.HeaderTime: ts, transport.HeaderPartitionKey: pkey, transport.HeaderContentType: ctype,
		} {
			if v != "" {
				h[k] = v
			}
		}
		m := &transport.Message{ID: msgID, Key: msgKey, Header: h, Body: body, Topic: "orders", Group: "g", Attempt: 1,
			Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}

		env, err := bus.DecodeEnvelope(m)
		if err != nil {
			var ee *bus.EnvelopeError
			if !errors.As(err, &ee) || !errors.Is(err, bus.ErrInvalidEnvelope) || !strings.Contains(err.Error(), ee.Attribute) {
				t.Fatalf("DecodeEnvelope error %q is not a clear *EnvelopeError", err)
			}
		}

		ev, derr := bus.Decode[OrderCreated](nil, m)
		switch {
		case err != nil && derr == nil:
			t.Fatalf("DecodeEnvelope failed (%v) but Decode did not", err)
		case derr != nil:
			var de *bus.DecodeError
			var ee *bus.EnvelopeError
			if !transport.IsPermanent(derr) || !(errors.As(derr, &de) || errors.As(derr, &ee)) {
				t.Fatalf("Decode error %q is not a permanent *DecodeError or *EnvelopeError", derr)
			}
			if de != nil && (!strings.Contains(derr.Error(), `topic "orders"`) || !strings.Contains(derr.Error(), "OrderCreated")) {
				t.Fatalf("Decode error %q does not name the topic and the type", derr)
			}
		default:
			if ev.ID != env.ID || ev.Type != env.Type || ev.Key != env.Key || !ev.Time.Equal(env.Time) || ev.Topic != "orders" {
				t.Fatalf("event %+v disagrees with envelope %+v", ev, env)
			}
		}
		if err != nil {
			return
		}

		// What decoded survives a re-encode.
		if env.Type == "" {
			env.Type = "T"
		}
		if env.Source == "" {
			env.Source = "s"
		}
		m2, err := bus.EncodeEnvelope(env, body)
		if y := env.Time.UTC().Year(); err != nil && errors.Is(err, bus.ErrInvalidEnvelope) && (y < 0 || y > 9999) {
			return // a time with an offset that UTC cannot write in RFC 3339
		}
		if err != nil {
			t.Fatalf("re-encode of %+v: %v", env, err)
		}
		env2, err := bus.DecodeEnvelope(m2)
		if err != nil {
			t.Fatalf("decode of re-encoded %+v: %v", m2.Header, err)
		}
		if env.ID == "" {
			env.ID = env2.ID // a new one
		}
		if env2.ID != env.ID || env2.Type != env.Type || env2.Source != env.Source || env2.Subject != env.Subject ||
			env2.Key != env.Key || env2.ContentType != env.ContentType || !env2.Time.Equal(env.Time) || env2.SpecVersion != bus.SpecVersion {
			t.Fatalf("round trip changed the envelope:\n%+v\n%+v", env, env2)
		}
		for k, v := range env.Header {
			if !strings.HasPrefix(k, "ce_") && k != transport.HeaderContentType && m2.Header[k] != v {
				t.Fatalf("header %q = %q after round trip, want %q", k, m2.Header[k], v)
			}
		}
	})
}
