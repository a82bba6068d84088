//go:build !amd64 || purego

package bus

// haveAVX2: there is no vector code here (see plainscan_amd64.go).
const haveAVX2 = false

// plainOutPrefix and plainInPrefix: without the vector code, no prefix is
// known plain; plainOut and plainString scan all of the string.
func plainOutPrefix(string) int { return 0 }

func plainInPrefix([]byte) int { return 0 }
