//go:build race

package bus

// raceEnabled: the race detector's instrumentation allocates where the
// code alone does not, so allocation counts are not checked under it.
const raceEnabled = true
