package nats

import (
	"maps"
	"strconv"
	"testing"

	natsgo "github.com/nats-io/nats.go"

	"github.com/busway/busway/transport"
)

// ackMeta reads what nats.go's Msg.Metadata reads, from both forms of ack
// subject, and refuses what Metadata refuses.
func TestAckMeta(t *testing.T) {
	sub := &natsgo.Subscription{}
	for _, reply := range []string{
		"$JS.ACK.BUSWAY.g_t_0a1b2c3d.3.1042.977.1764590000123456789.12",
		"$JS.ACK._.ACCHASH.BUSWAY.g_t_0a1b2c3d.1.7.7.1764590000123456789.0.rnd",
		"$JS.ACK.dom.ACCHASH.BUSWAY.g_t_0a1b2c3d.18446744073709551615.2.2.5.0",
		"$JS.ACK.BUSWAY.c.x.1.1.1.0", // a token that is not a number reads as 0
		"$JS.ACK.BUSWAY.c.1.x.1.1.0",
		"$JS.ACK.BUSWAY.c.1.007.1.1.0", // the sequence is "7" in Meta
		"$JS.ACK.BUSWAY.c.1.0.1.1.0",
		"$JS.ACK.BUSWAY.c.1.2.3.4", // too few tokens
		"$JS.ACK.a.b.c.d.e.f.g.h",  // ten tokens: neither form
		"$JS.NAK.BUSWAY.c.1.2.3.4.5",
		"",
	} {
		want, werr := (&natsgo.Msg{Reply: reply, Sub: sub}).Metadata()
		got, ok := ackMeta(reply)
		// A subscription reads its own consumer's subjects by their end;
		// what it reads is the same.
		for _, prefix := range []string{"$JS.ACK.BUSWAY.g_t_0a1b2c3d.", "$JS.ACK.BUSWAY.c.", "$JS.ACK.a.b.", "$JS.ACK._.ACCHASH."} {
			s := &subscription{ackPrefix: prefix}
			if sgot, sok := s.ackMeta(reply); sgot != got || sok != ok {
				t.Errorf("%q: a subscription of %q read %+v, %v; ackMeta %+v, %v", reply, prefix, sgot, sok, got, ok)
			}
		}
		if ok != (werr == nil) {
			t.Errorf("%q: ackMeta ok %v, Metadata error %v", reply, ok, werr)
			continue
		}
		if !ok {
			continue
		}
		if got.delivered != want.NumDelivered || got.streamSeq != want.Sequence.Stream || got.time != want.Timestamp.UnixNano() ||
			got.seq != strconv.FormatUint(want.Sequence.Stream, 10) {
			t.Errorf("%q: ackMeta %+v, Metadata delivered %d, stream sequence %d, time %d",
				reply, got, want.NumDelivered, want.Sequence.Stream, want.Timestamp.UnixNano())
		}
	}
}

// BenchmarkFill: what a worker does to make a transport.Message of a
// received message, for one with only its Nats-Msg-Id (a raw or busway
// publish without key and headers) and one of the typed path's shape.
func BenchmarkFill(b *testing.B) {
	s := &subscription{topic: "orders", group: "g", ackPrefix: "$JS.ACK.BUSWAY.g_orders_0a1b2c3d."}
	reply := "$JS.ACK.BUSWAY.g_orders_0a1b2c3d.1.1042.977.1764590000123456789.12"
	for _, tc := range []struct {
		name string
		hdr  natsgo.Header
	}{
		{"id", natsgo.Header{"Nats-Msg-Id": {"busway.orders/ev-1042"}}},
		{"typed", natsgo.Header{
			"Nats-Msg-Id": {"busway.orders/ev-1042"}, "ce-type": {"OrderPlaced"}, "ce-source": {"orders"},
			"ce-specversion": {"1.0"}, "ce-time": {"2026-12-01T18:00:00Z"}, "ce-partitionkey": {"k-1"},
			"content-type": {"application/json"},
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			jm := &natsgo.Msg{Subject: "busway.orders", Reply: reply, Header: tc.hdr, Data: []byte("x")}
			var sl slot
			b.ReportAllocs()
			for b.Loop() {
				if m := sl.fill(s, jm); m.ID != "ev-1042" || m.Attempt != 1 {
					b.Fatalf("ID %q attempt %d", m.ID, m.Attempt)
				}
			}
		})
	}
}

func BenchmarkAckMeta(b *testing.B) {
	reply := "$JS.ACK.BUSWAY.g_orders_0a1b2c3d.1.1042.977.1764590000123456789.12"
	for b.Loop() {
		if md, ok := ackMeta(reply); !ok || md.streamSeq != 1042 {
			b.Fatal(md)
		}
	}
}

// TestFillReused: a slot's Message, reused from one message to the next,
// holds each message's headers and Meta alone, also when the handler
// before changed them or the message before had more.
func TestFillReused(t *testing.T) {
	s := &subscription{topic: "orders", group: "g", ackPrefix: "$JS.ACK.BUSWAY.g_orders_0a1b2c3d."}
	ack := func(seq string) string { return s.ackPrefix + "1." + seq + "." + seq + ".1764590000123456789.0" }
	var sl slot
	for i, tc := range []struct {
		jm     *natsgo.Msg
		id     string
		header map[string]string
		meta   map[string]string
		mess   func(m *transport.Message) // what the handler does to it
	}{
		{jm: &natsgo.Msg{Subject: "busway.orders", Reply: ack("1"), Header: natsgo.Header{"Nats-Msg-Id": {"busway.orders/a"}}},
			id: "a", meta: map[string]string{transport.MetaSequence: "1"},
			mess: func(m *transport.Message) { m.Meta["extra"] = "x" }},
		{jm: &natsgo.Msg{Subject: "busway.orders", Reply: ack("2"), Header: natsgo.Header{
			"Nats-Msg-Id": {"busway.orders/b"}, "ce-type": {"T"}, "ce-partitionkey": {"k"}, "x-other": {"o"}, "empty": {}}},
			id: "b", header: map[string]string{transport.HeaderType: "T", transport.HeaderPartitionKey: "k", "x-other": "o"},
			meta: map[string]string{transport.MetaSequence: "2"},
			mess: func(m *transport.Message) { delete(m.Meta, transport.MetaSequence); m.Meta["other"] = "y" }},
		{jm: &natsgo.Msg{Subject: "busway.orders", Reply: ack("3"), Header: natsgo.Header{"Nats-Msg-Id": {"busway.orders/c"}}},
			id: "c", meta: map[string]string{transport.MetaSequence: "3"}},
		{jm: &natsgo.Msg{Subject: "busway.orders", Reply: ack("4"), Header: natsgo.Header{"ce-id": {"d"}}},
			id: "d", header: map[string]string{transport.HeaderID: "d"}, meta: map[string]string{transport.MetaSequence: "4"}},
		{jm: &natsgo.Msg{Subject: "busway.orders", Reply: "", Header: natsgo.Header{"Nats-Msg-Id": {"e"}}},
			id: "e", meta: map[string]string{}},
	} {
		m := sl.fill(s, tc.jm)
		if m.ID != tc.id || !maps.Equal(m.Header, tc.header) || !maps.Equal(m.Meta, tc.meta) || m.Key != tc.header[transport.HeaderPartitionKey] {
			t.Errorf("message %d: ID %q, Key %q, Header %v, Meta %v; want %q, %v, %v", i, m.ID, m.Key, m.Header, m.Meta, tc.id, tc.header, tc.meta)
		}
		if tc.mess != nil {
			tc.mess(m)
		}
	}
}
