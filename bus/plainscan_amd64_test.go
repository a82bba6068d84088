//go:build amd64 && !purego

package bus

import "testing"

// TestPlainScansWithoutAVX2: the word-at-a-time scans alone, as on a CPU
// without AVX2, give the same verdicts.
func TestPlainScansWithoutAVX2(t *testing.T) {
	if !haveAVX2 {
		t.Skip("no AVX2: the other tests ran the scans without it")
	}
	haveAVX2 = false
	defer func() { haveAVX2 = true }()
	t.Run("out", TestPlainOutMatchesEncodingJSON)
	t.Run("in", TestPlainStringMatchesByteLoop)
	t.Run("boundaries", TestPlainScansAtBlockBoundaries)
}
