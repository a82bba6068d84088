package bus_test

import (
	"strings"
	"testing"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

// The JSON codec takes a body with white space after the value, as
// json.Unmarshal does, and refuses one with anything else after it.
func TestJSONBodyTrailingSpace(t *testing.T) {
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{`{"ID":"42","Amount":7}`, true},
		{"{\"ID\":\"42\",\"Amount\":7} \n\t\r ", true},
		{"  {\"ID\":\"42\",\"Amount\":7}\n", true},
		{`{"ID":"42","Amount":7} x`, false},
		{`{"ID":"42","Amount":7}{}`, false},
		{" \n", false},
	} {
		m := &transport.Message{ID: "m", Topic: "t", Body: []byte(tc.body),
			Header: map[string]string{transport.HeaderType: "OrderCreated", transport.HeaderContentType: "application/json"}}
		e, err := bus.Decode[OrderCreated](bus.JSON, m)
		if tc.ok && (err != nil || e.Data.ID != "42" || e.Data.Amount != 7) {
			t.Errorf("body %q: %+v, %v; want it decoded", tc.body, e.Data, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("body %q decoded to %+v; want an error", strings.TrimSpace(tc.body), e.Data)
		}
	}
}
