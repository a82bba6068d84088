package transport_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/busway/busway/transport"
)

// TestRedact: every credential a transport URL can carry is hidden in its
// printed form: a password, a NATS token in the user name, and secret query
// options; the rest stays readable.
func TestRedact(t *testing.T) {
	for _, c := range []struct{ raw, want string }{
		{"nats://user:hunter2pw@h:4222?stream=S", "nats://user:xxxxx@h:4222?stream=S"},
		{"nats://t0kenvalue@h:4222", "nats://xxxxx@h:4222"},
		{"nats://h:4222?token=t0kenvalue&stream=S", "nats://h:4222?token=xxxxx&stream=S"},
		{"kafka://h:9092?sasl_password=pw1&Secret_Key=k&acks=all", "kafka://h:9092?sasl_password=xxxxx&Secret_Key=xxxxx&acks=all"},
		{"nats://h#t0kenvalue", "nats://h"},
		{"chan://?buffer=8", "chan://?buffer=8"},
		{"nats:t0kenvalue@h", "nats:xxxxx@h"},
		// ';' is not a separator for busway (an error), but the error
		// echoes the URL: a secret after one is hidden too.
		{"nats://h:4222?stream=S;token=t0kenvalue&name=x", "nats://h:4222?stream=S;token=xxxxx&name=x"},
		{"nats://h:4222?&&token=t0kenvalue;;", "nats://h:4222?&&token=xxxxx;;"},
	} {
		u, err := url.Parse(c.raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := transport.Redact(u); got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.raw, got, c.want)
		}
	}
	// A URL that does not parse.
	for _, raw := range []string{"nats://user:hunter2pw@h:port", "nats://t0kenvalue@h:port?x=1", "nats://h:port?token=t0kenvalue", "nats:t0kenvalue@h:port",
		"nats://h:4222?stream=S;token=t0kenvalue", "nats://h:4222?stream=S%ZZ&token=t0kenvalue",
		// Credentials with a character net/url splits them at: it would
		// take a piece for the host, the port, a path or a query option.
		"nats://user:hunter2pw/x@h:4222", "nats://user:hunter2pw?x@h:4222", "nats://user:hunter2pw#x@h:4222", "nats://user:hunter2pw%zz@h:4222",
		"nats://t0kenvalue/x@h:4222", "nats://t0kenvalue?x@h:4222", "nats://t0kenvalue#x@h:4222", "kafka://u:x/hunter2pw@h:9092?sasl=plain"} {
		var m transport.Mux
		_, err := m.Open(context.Background(), raw)
		if err == nil {
			t.Fatalf("Open(%q) succeeded", raw)
		}
		for _, s := range []string{"hunter2pw", "t0kenvalue"} {
			if strings.Contains(err.Error(), s) || strings.Contains(transport.RedactRaw(raw), s) {
				t.Errorf("Open(%q) = %v, RedactRaw %q: shows %q", raw, err, transport.RedactRaw(raw), s)
			}
		}
	}
}
