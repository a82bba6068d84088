package nats

import (
	"strconv"
	"testing"

	natsgo "github.com/nats-io/nats.go"
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
