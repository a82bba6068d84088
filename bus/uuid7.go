package bus

import (
	"crypto/rand"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// lastV7 is the timestamp of the last UUIDv7 newV7 made, in units of
// 1/4096 ms since the Unix epoch: the 48-bit millisecond field and the
// 12-bit rand_a field together.
var lastV7 atomic.Int64

// newV7 returns a new UUIDv7 (RFC 9562) for the time now: the Unix time
// in milliseconds, then in rand_a the fraction of the millisecond in
// 1/4096ths (the RFC's method 3, more clock precision), then 62 random bits
// from crypto/rand. The 60-bit timestamp rises strictly from one call to the
// next in this process, also for calls within one clock tick, so the IDs of
// one publisher sort in the order it made them.
//
// Unlike uuid.NewV7, which reads its random bytes through an io.Reader,
// it keeps the UUID on the caller's stack: no allocation.
func newV7(now time.Time) uuid.UUID {
	nano := now.UnixNano()
	ms := nano / 1e6
	ts := ms<<12 | (nano-ms*1e6)*4096/1e6
	for {
		last := lastV7.Load()
		if ts <= last {
			ts = last + 1
		}
		if lastV7.CompareAndSwap(last, ts) {
			break
		}
	}
	var u uuid.UUID
	_, _ = rand.Read(u[8:]) // never fails (crypto/rand.Read crashes the program instead)
	ms, frac := ts>>12, ts&0xfff
	u[0], u[1], u[2], u[3], u[4], u[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	u[6] = 0x70 | byte(frac>>8) // version 7
	u[7] = byte(frac)
	u[8] = 0x80 | u[8]&0x3f // variant 10 (RFC 9562)
	return u
}
