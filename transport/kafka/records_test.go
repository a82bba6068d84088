package kafka

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"

	"github.com/busway/busway/transport"
)

// TestToRecordsRoundTrip: the records Publish encodes from its shared
// slices (toRecords, and a reused recordBufs) read back, through kafka-go's encoder and decoder, as the
// messages: null key for no key, null value for a nil body, an empty one
// for an empty body, every header (an empty value empty, not null) and
// the ID header only where ce_id does not hold the ID.
func TestToRecordsRoundTrip(t *testing.T) {
	msgs := []*transport.Message{
		{ID: "id-0", Key: "k0", Body: []byte("body 0"), Header: map[string]string{"a": "1", "empty": ""}},
		{Body: nil},
		{Key: "k2", Body: []byte{}},
		{ID: "id-3", Body: []byte("b3"), Header: map[string]string{transport.HeaderID: "id-3", "x": "y"}},
		{ID: "id-4", Body: bytes.Repeat([]byte("z"), 70000)},
	}
	now := time.UnixMilli(1700000000123)
	// One recordBufs for all, as a pooled one is reused: fewer records
	// and headers than before, then more.
	b := new(recordBufs)
	for k, idx := range [][]int{nil, {4, 1, 3}, {0}, nil} {
		var rs protocol.RecordSet
		if k == 0 {
			rs = protocol.RecordSet{Version: 2, Records: kafkago.NewRecordReader(toRecords(msgs, idx, now)...)}
		} else {
			b.fill(msgs, idx, now)
			rs = protocol.RecordSet{Version: 2, Records: &b.reader}
		}
		var buf bytes.Buffer
		if _, err := rs.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		var got protocol.RecordSet
		if _, err := got.ReadFrom(&buf); err != nil {
			t.Fatal(err)
		}
		want := msgs
		if idx != nil {
			want = nil
			for _, i := range idx {
				want = append(want, msgs[i])
			}
		}
		for j, m := range want {
			r, err := got.Records.ReadRecord()
			if err != nil {
				t.Fatalf("record %d: %v", j, err)
			}
			if !r.Time.Equal(now) {
				t.Errorf("record %d: time %v", j, r.Time)
			}
			checkField(t, j, "key", r.Key, m.Key != "", []byte(m.Key))
			checkField(t, j, "value", r.Value, m.Body != nil, m.Body)
			hdr := map[string]string{}
			for _, h := range r.Headers {
				if h.Value == nil {
					t.Errorf("record %d: header %s is null", j, h.Key)
				}
				hdr[h.Key] = string(h.Value)
			}
			wantHdr := map[string]string{}
			for k, v := range m.Header {
				wantHdr[k] = v
			}
			if addID(m) {
				wantHdr[idHeader] = m.ID
			}
			if len(hdr) != len(wantHdr) || len(r.Headers) != len(wantHdr) {
				t.Errorf("record %d: headers %v, want %v", j, r.Headers, wantHdr)
			}
			for k, v := range wantHdr {
				if hdr[k] != v {
					t.Errorf("record %d: header %s = %q, want %q", j, k, hdr[k], v)
				}
			}
		}
		if _, err := got.Records.ReadRecord(); !errors.Is(err, io.EOF) {
			t.Errorf("after the records: %v, want io.EOF", err)
		}
	}
}

func checkField(t *testing.T, j int, name string, b protocol.Bytes, present bool, want []byte) {
	t.Helper()
	if !present {
		if b != nil {
			t.Errorf("record %d: %s present, want null", j, name)
		}
		return
	}
	if b == nil {
		t.Errorf("record %d: %s null, want %d bytes", j, name, len(want))
		return
	}
	got, err := protocol.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("record %d: %s %d bytes, want %d", j, name, len(got), len(want))
	}
}

// TestFieldRead: a field read with Read, in small steps, yields its bytes
// once.
func TestFieldRead(t *testing.T) {
	for _, f := range []*field{{s: "a key of some length", str: true}, {b: []byte("a value of some length")}} {
		want := f.s + string(f.b)
		var got []byte
		p := make([]byte, 3)
		for {
			n, err := f.Read(p)
			got = append(got, p[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if string(got) != want || f.Len() != 0 {
			t.Errorf("read %q (Len %d after), want %q", got, f.Len(), want)
		}
	}
}
