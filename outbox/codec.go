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

func decodeHeaders(b []byte) (map[string]string, error) {
	if len(b) == 0 || b[0] != headerFormat {
		return nil, fmt.Errorf("%w: unknown format", errCorrupt)
	}
	b = b[1:]
	h := make(map[string]string, 8)
	for len(b) > 0 {
		k, rest, err := readString(b)
		if err != nil {
			return nil, err
		}
		v, rest, err := readString(rest)
		if err != nil {
			return nil, err
		}
		h[k] = v
		b = rest
	}
	return h, nil
}

func readString(b []byte) (string, []byte, error) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return "", nil, fmt.Errorf("%w: truncated", errCorrupt)
	}
	return string(b[w : w+int(n)]), b[w+int(n):], nil
}
