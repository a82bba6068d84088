package bus

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestPlainScansAtBlockBoundaries: plainOut and plainString give
// encoding/json's verdict for the bytes that need a look (invalid UTF-8,
// control characters, U+2028, quotes, backslashes, HTML characters, DEL,
// multi-byte characters) placed at the ends of the eight-byte words and of
// the 32-byte blocks of the vector scan, in strings of up to 4 KiB.
func TestPlainScansAtBlockBoundaries(t *testing.T) {
	specials := []struct{ name, s string }{
		{"quote", `"`}, {"backslash", `\`}, {"less", "<"}, {"greater", ">"}, {"amp", "&"},
		{"nul", "\x00"}, {"newline", "\n"}, {"unit-separator", "\x1f"}, {"space", " "}, {"del", "\x7f"},
		{"e-acute", "é"}, {"euro", "€"}, {"emoji", "😀"}, {"u2028", "\u2028"}, {"u2029", "\u2029"},
		{"lone-continuation", "\x80"}, {"truncated", "\xe2\x82"}, {"surrogate", "\xed\xa0\x80"}, {"ff", "\xff"},
	}
	var positions []int
	for _, b := range []int{0, 8, 32, 64, 96, 128, 160, 4064} {
		for _, d := range []int{-2, -1, 0, 1} {
			if p := b + d; p >= 0 {
				positions = append(positions, p)
			}
		}
	}
	for _, n := range []int{31, 32, 33, 64, 100, 127, 128, 129, 200, 4096} {
		for _, sp := range specials {
			for _, pos := range positions {
				if pos+len(sp.s) > n {
					continue
				}
				s := strings.Repeat("a", pos) + sp.s + strings.Repeat("b", n-pos-len(sp.s))
				out, err := json.Marshal(s)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := plainOut(s), string(out) == `"`+s+`"`; got != want {
					t.Errorf("%s at %d of %d: plainOut = %v, json.Marshal writes it %s", sp.name, pos, n, got, map[bool]string{true: "as it is", false: "escaped"}[want])
				}
				data := []byte(`"` + s + `"}`)
				wantEnd, wantOK := plainStringRef(data, 1)
				if end, ok := plainString(data, 1); ok != wantOK || ok && end != wantEnd {
					t.Errorf("%s at %d of %d: plainString = %d, %v; want %d, %v", sp.name, pos, n, end, ok, wantEnd, wantOK)
				}
			}
		}
	}
}

// plainStringRef is plainString byte by byte.
func plainStringRef(data []byte, start int) (int, bool) {
	for j := start; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			return j, utf8.Valid(data[start:j])
		case c < 0x20 || c == '\\':
			return 0, false
		}
	}
	return 0, false
}

// TestPlainPrefixes: the prefixes plainOutPrefix and plainInPrefix skip
// end at the first byte that needs a look, or at the last whole 32-byte
// block, and hold only bytes that need none.
func TestPlainPrefixes(t *testing.T) {
	for n := range 200 {
		for pos := -1; pos < n; pos++ {
			for _, c := range []byte{'"', '\\', '<', '>', '&', 0, 0x1f, 0x80, 0xff} {
				b := []byte(strings.Repeat("x", n))
				if pos >= 0 {
					b[pos] = c
				}
				checkPrefix(t, "plainOutPrefix", b, plainOutPrefix(string(b)), func(c byte) bool { return !plainOutByte(c) || c >= utf8.RuneSelf })
				checkPrefix(t, "plainInPrefix", b, plainInPrefix(b), func(c byte) bool { return c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' })
			}
		}
	}
}

func checkPrefix(t *testing.T, name string, b []byte, k int, look func(byte) bool) {
	t.Helper()
	if k < 0 || k > len(b) {
		t.Fatalf("%s(%q) = %d, out of range", name, b, k)
	}
	for j := range k {
		if look(b[j]) {
			t.Fatalf("%s(%q) = %d, past byte %d (%#x)", name, b, k, j, b[j])
		}
	}
	if k < len(b)&^31 && !look(b[k]) && haveAVX2 {
		t.Fatalf("%s(%q) = %d, stops at a plain byte %#x", name, b, k, b[k])
	}
}
