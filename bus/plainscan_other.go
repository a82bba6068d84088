//go:build !amd64 || purego

package bus

// plainOutPrefix and plainInPrefix: without the vector code, no prefix is
// known plain; plainOut and plainString scan all of the string.
func plainOutPrefix(string) int { return 0 }

func plainInPrefix([]byte) int { return 0 }

func haveVectorScan() bool { return false }
