package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Headers are stored in one column in a compact binary form: a version
// byte (1), then per header uvarint(len(name)) name uvarint(len(value))
// value. Faster to decode than JSON on the relay's hot path, and
// unambiguous for any byte in names and values.
const headerFormat = 1

var errCorrupt = errors.New("corrupt headers column")

func encodeHeaders(h map[string]string) []byte {
	n := 1
	for k, v := range h {
		n += 2*binary.MaxVarintLen32 + len(k) + len(v)
	}
	b := make([]byte, 1, n)
	b[0] = headerFormat
	for k, v := range h {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

// decodeHeaders decodes b (which it does not keep) into a map whose names
// and values are substrings of one string: one copy of b instead of one
// allocation per name and value.
func decodeHeaders(b []byte) (map[string]string, error) {
	if len(b) == 0 || b[0] != headerFormat {
		return nil, fmt.Errorf("%w: unknown format", errCorrupt)
	}
	s := string(b[1:])
	h := make(map[string]string, 8)
	for len(s) > 0 {
		k, rest, err := readString(s)
		if err != nil {
			return nil, err
		}
		v, rest, err := readString(rest)
		if err != nil {
			return nil, err
		}
		h[k] = v
		s = rest
	}
	return h, nil
}

// readString reads one uvarint-prefixed string off s.
func readString(s string) (string, string, error) {
	var n uint64
	for i := 0; i < len(s) && i < binary.MaxVarintLen64; i++ {
		c := s[i]
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break // overflows 64 bits
			}
			n |= uint64(c) << (7 * i)
			if w := i + 1; n <= uint64(len(s)-w) {
				return s[w : w+int(n)], s[w+int(n):], nil
			}
			break
		}
		n |= uint64(c&0x7f) << (7 * i)
	}
	return "", "", fmt.Errorf("%w: truncated", errCorrupt)
}
