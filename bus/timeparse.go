package bus

import (
	"sync/atomic"
	"time"
)

// parseTime parses s as time.Parse(time.RFC3339Nano, s) does. It reads
// what Publish writes (UTC, "Z", up to nine fraction digits) itself, about
// twice as fast, and leaves every other form, and every error, to
// time.Parse.
func parseTime(s string) (time.Time, error) {
	if t, ok := parseUTC(s); ok {
		return t, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

func parseUTC(s string) (time.Time, bool) {
	if len(s) < 20 || len(s) > 30 || s[len(s)-1] != 'Z' ||
		s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	num := func(i, n int) (int, bool) {
		v := 0
		for _, c := range []byte(s[i : i+n]) {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	year, ok1 := num(0, 4)
	month, ok2 := num(5, 2)
	day, ok3 := num(8, 2)
	hour, ok4 := num(11, 2)
	minute, ok5 := num(14, 2)
	sec, ok6 := num(17, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month < 1 || month > 12 || day < 1 ||
		day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	ns := 0
	if frac := s[19 : len(s)-1]; frac != "" {
		if len(frac) < 2 || frac[0] != '.' {
			return time.Time{}, false
		}
		v, ok := num(20, len(frac)-1)
		if !ok {
			return time.Time{}, false
		}
		for range 10 - len(frac) {
			v *= 10
		}
		ns = v
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, ns, time.UTC), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// appendTime appends t in RFC 3339 with nanoseconds, UTC, as
// t.UTC().AppendFormat(b, time.RFC3339Nano) does, for a t whose UTC year
// is 0 to 9999 (the callers check it). The date and time of day of the
// last second it wrote are kept (lastSecond), so that the events of one
// second, the common case, format only their fraction of a second.
func appendTime(b []byte, t time.Time) []byte {
	sec := t.Unix()
	p := lastSecond.Load()
	if p == nil || p.sec != sec {
		start := len(b)
		b = t.UTC().AppendFormat(b, time.RFC3339Nano)
		if out := b[start:]; len(out) > len(secondText{}.text) && (out[19] == '.' || out[19] == 'Z') {
			// The date and time of day are the first 19 bytes: then
			// the text of any time in this second is them, its fraction
			// and "Z".
			np := &secondText{sec: sec}
			copy(np.text[:], b[start:])
			lastSecond.Store(np)
		}
		return b
	}
	b = append(b, p.text[:]...)
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}

// secondText is the text of one second, "2006-01-02T15:04:05" in UTC.
type secondText struct {
	sec  int64 // Unix time
	text [19]byte
}

var lastSecond atomic.Pointer[secondText]
