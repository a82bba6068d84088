package outbox

import (
	"encoding/binary"
	"errors"
	"maps"
	"testing"
)

func TestHeadersRoundTrip(t *testing.T) {
	for _, h := range []map[string]string{
		{},
		{"ce_id": "0192d3c4-0000-7000-8000-000000000000", "ce_type": "OrderPlaced", "": "", "k": string(make([]byte, 300))},
		{"a\x00b": "\xff\xfe", "long": string(make([]byte, 70000))},
	} {
		got, err := decodeHeaders(encodeHeaders(h))
		if err != nil || !maps.Equal(got, h) {
			t.Fatalf("round trip of %d headers: %v, equal %v", len(h), err, maps.Equal(got, h))
		}
	}
}

func TestHeadersCorrupt(t *testing.T) {
	good := encodeHeaders(map[string]string{"ce_id": "x", "ce_type": "y"})
	bad := [][]byte{
		nil, {}, {2}, // no or unknown format
		good[:len(good)-1],           // value cut short
		append([]byte{1}, 5, 'a'),    // name longer than the rest
		append([]byte{1}, 1, 'a', 9), // value longer than the rest
		append([]byte{1}, 0x80),      // uvarint cut short
		{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, // uvarint overflows
		{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	}
	for i, b := range bad {
		if _, err := decodeHeaders(b); !errors.Is(err, errCorrupt) {
			t.Errorf("case %d (% x): %v, want errCorrupt", i, b, err)
		}
	}
}

// readString agrees with binary.Uvarint on every prefix it accepts.
func FuzzReadString(f *testing.F) {
	f.Add([]byte{3, 'a', 'b', 'c', 'd'})
	f.Add([]byte{0x80, 0x01})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, rest, err := readString(string(b))
		n, w := binary.Uvarint(b)
		ok := w > 0 && n <= uint64(len(b)-w)
		if ok != (err == nil) {
			t.Fatalf("% x: readString err %v, Uvarint (%d, %d)", b, err, n, w)
		}
		if ok && (s != string(b[w:w+int(n)]) || rest != string(b[w+int(n):])) {
			t.Fatalf("% x: readString %q %q", b, s, rest)
		}
	})
}
