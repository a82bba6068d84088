//go:build amd64 && !purego

package bus

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// haveAVX2 says whether the plain-string scans may use the AVX2 code.
var haveAVX2 = cpu.X86.HasAVX2

//go:noescape
func plainOutPrefixAVX2(p *byte, n int) int

//go:noescape
func plainInPrefixAVX2(p *byte, n int) int

// plainOutPrefix returns the length of a prefix of s, a multiple of 32
// bytes or up to the first byte that plainOut must look at, of bytes that
// encoding/json writes as they are and that are ASCII: plainOut of the
// rest then says whether s is plain. (One vector pass instead of the
// word-at-a-time scans, for the long plain strings that are worth it.)
func plainOutPrefix(s string) int {
	if !haveAVX2 || len(s) < 32 {
		return 0
	}
	return plainOutPrefixAVX2(unsafe.StringData(s), len(s))
}

// plainInPrefix is plainOutPrefix for plainString: a prefix of b of ASCII
// bytes that are neither control characters, nor '"', nor '\\'.
func plainInPrefix(b []byte) int {
	if !haveAVX2 || len(b) < 32 {
		return 0
	}
	return plainInPrefixAVX2(unsafe.SliceData(b), len(b))
}
