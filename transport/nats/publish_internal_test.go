package nats

import (
	"errors"
	"strings"
	"testing"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
)

// TestAckError: a reply is read as jetstream's PublishMsg reads it; the
// shortcut for a PubAck accepts only a PubAck.
func TestAckError(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  error // nil: stored
		code  jetstream.ErrorCode
	}{
		{reply: `{"stream":"BUSWAY","seq":12}`},
		{reply: `{"stream":"BUSWAY","seq":12,"duplicate":true}`},
		{reply: `{"stream":"error","seq":1}`},
		{reply: `{"seq":1,"stream":"S"}`},
		{reply: `{"stream":"","seq":1}`, want: jetstream.ErrInvalidJSAck},
		{reply: `{"seq":1}`, want: jetstream.ErrInvalidJSAck},
		{reply: `not json`, want: jetstream.ErrInvalidJSAck},
		{reply: ``, want: jetstream.ErrInvalidJSAck},
		{reply: `{"stream":"S","error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}`,
			want: jetstream.ErrStreamMessageExceedsMaximum},
		{reply: `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`, code: 10077},
	} {
		err := ackError([]byte(tc.reply))
		switch {
		case tc.want == nil && tc.code == 0:
			if err != nil {
				t.Errorf("%s: %v, want stored", tc.reply, err)
			}
		case tc.code != 0:
			var ae *jetstream.APIError
			if !errors.As(err, &ae) || ae.ErrorCode != tc.code {
				t.Errorf("%s: %v, want API error %d", tc.reply, err, tc.code)
			}
			if n := strings.Count(err.Error(), "nats: "); n != 1 {
				t.Errorf("%s: %q says \"nats: \" %d times", tc.reply, err, n)
			}
		case !errors.Is(err, tc.want):
			t.Errorf("%s: %v, want %v", tc.reply, err, tc.want)
		}
	}
}

// TestWireBuf: the headers carved from one wireBuf do not share values,
// whether the buffer was grown for them or grows as it goes.
func TestWireBuf(t *testing.T) {
	msgs := []*transport.Message{
		{ID: "a", Key: "k1", Header: map[string]string{"ce_type": "t1", "x": "1"}},
		{ID: "bb"},
		{Key: "k3"},
		{ID: "ccc", Header: map[string]string{"ce_other": "o"}},
	}
	for _, grow := range []bool{true, false} {
		var wb wireBuf
		if grow {
			wb.grow("s.t", msgs)
		}
		nms := make([]natsgo.Msg, len(msgs))
		for i, m := range msgs {
			if err := toWire(&nms[i], "s.t", m, &wb); err != nil {
				t.Fatal(err)
			}
		}
		want := []natsgo.Header{
			{"Nats-Msg-Id": {"s.t/a"}, "ce-partitionkey": {"k1"}, "ce-type": {"t1"}, "x": {"1"}},
			{"Nats-Msg-Id": {"s.t/bb"}},
			{"ce-partitionkey": {"k3"}},
			{"Nats-Msg-Id": {"s.t/ccc"}, "ce-other": {"o"}},
		}
		for i := range nms {
			if got := nms[i].Header; len(got) != len(want[i]) {
				t.Errorf("grow %v: message %d: header %v, want %v", grow, i, got, want[i])
			}
			for k, v := range want[i] {
				if got := nms[i].Header.Values(k); len(got) != 1 || got[0] != v[0] {
					t.Errorf("grow %v: message %d: %s = %q, want %q", grow, i, k, got, v)
				}
			}
			if nms[i].Subject != "s.t" {
				t.Errorf("message %d: subject %q", i, nms[i].Subject)
			}
		}
	}
}
