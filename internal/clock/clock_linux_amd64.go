package clock

import (
	"syscall"
	"time"
)

// now reads the wall clock alone: gettimeofday, which Go calls through the
// vDSO on linux/amd64, with no system call.
func now() time.Time {
	var tv syscall.Timeval
	if syscall.Gettimeofday(&tv) != nil {
		return standard()
	}
	return time.Unix(tv.Sec, tv.Usec*int64(time.Microsecond))
}
