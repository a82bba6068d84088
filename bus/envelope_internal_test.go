package bus

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/transport"
)

// refDecodeEnvelope is DecodeEnvelope's attributes as it read them before
// it counted the headers it found: a look-up per attribute.
func refDecodeEnvelope(m *transport.Message) Envelope {
	h := m.Header
	e := Envelope{
		ID: h[transport.HeaderID], Type: h[transport.HeaderType], Source: h[transport.HeaderSource],
		Subject: h[transport.HeaderSubject], Key: m.Key, ContentType: h[transport.HeaderContentType],
		DataSchema: h[transport.HeaderDataSchema], SpecVersion: h[transport.HeaderSpecVersion], Time: m.Time, Header: h,
	}
	if e.ID == "" {
		e.ID = m.ID
	}
	if e.ContentType == "" {
		e.ContentType = h[transport.HeaderDataContentType]
	}
	if e.Key == "" {
		e.Key = h[transport.HeaderPartitionKey]
	}
	if v := h[transport.HeaderTime]; v != "" {
		e.Time, _ = parseTime(v)
	}
	return e
}

// DecodeEnvelope skips the optional attributes' look-ups only when the
// headers it found are all there are: every subset of the attributes,
// with values empty or not, with other headers or not, and with the
// message's own ID and key or not, decodes as a look-up of each did.
func TestDecodeEnvelopeSkipsOnlyAbsentAttributes(t *testing.T) {
	names := []string{transport.HeaderID, transport.HeaderType, transport.HeaderSource, transport.HeaderSpecVersion,
		transport.HeaderTime, transport.HeaderContentType, transport.HeaderSubject, transport.HeaderDataSchema,
		transport.HeaderDataContentType, transport.HeaderPartitionKey}
	value := func(name string, i int) string {
		if i%3 == 0 {
			return "" // present, empty
		}
		if name == transport.HeaderTime {
			return "2026-12-02T06:07:01.5Z"
		}
		if name == transport.HeaderSpecVersion {
			return "1.0"
		}
		return strings.ToUpper(name) + "-value"
	}
	checked := 0
	for set := range 1 << len(names) {
		for variant := range 8 {
			h := map[string]string{}
			for i, name := range names {
				if set&(1<<i) != 0 {
					h[name] = value(name, set>>i+variant)
				}
			}
			if variant&1 != 0 {
				h["ce_tenant"] = "acme"
			}
			m := &transport.Message{Header: h, Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			if variant&2 != 0 {
				m.ID = "msg-id"
			}
			if variant&4 != 0 {
				m.Key = "msg-key"
			}
			got, err := DecodeEnvelope(m)
			if err != nil {
				t.Fatalf("headers %v: %v", h, err)
			}
			if want := refDecodeEnvelope(m); !reflect.DeepEqual(got, want) {
				t.Fatalf("headers %v, message ID %q, key %q:\n got %+v\nwant %+v", h, m.ID, m.Key, got, want)
			}
			checked++
		}
	}
	t.Logf("%d header sets", checked)
}
