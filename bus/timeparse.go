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
	if len(s) < 20 || len(s) > 30 || s[len(s)-1] != 'Z' {
		return time.Time{}, false
	}
	if p := lastParsed.Load(); p != nil && s[:19] == string(p.text[:]) {
		// The second parsed last (the common case: a consumer reads the
		// events of one second after another): only the fraction is new.
		ns, ok := parseFraction(s[19 : len(s)-1])
		if !ok {
			return time.Time{}, false
		}
		return time.Unix(p.sec, int64(ns)).UTC(), true
	}
	if s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	year, ok1 := digits(s[0:4])
	month, ok2 := digits(s[5:7])
	day, ok3 := digits(s[8:10])
	hour, ok4 := digits(s[11:13])
	minute, ok5 := digits(s[14:16])
	sec, ok6 := digits(s[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month < 1 || month > 12 || day < 1 ||
		day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	ns, ok := parseFraction(s[19 : len(s)-1])
	if !ok {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, ns, time.UTC)
	p := &secondText{sec: t.Unix()}
	copy(p.text[:], s)
	lastParsed.Store(p)
	return t, true
}

// digits parses s, decimal digits only.
func digits(s string) (int, bool) {
	v := 0
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}

// parseFraction parses the fraction of a second after the seconds of an
// RFC 3339 time: empty, or '.' and one to nine digits; in nanoseconds.
func parseFraction(frac string) (int, bool) {
	if frac == "" {
		return 0, true
	}
	if len(frac) < 2 || len(frac) > 10 || frac[0] != '.' {
		return 0, false
	}
	v, ok := digits(frac[1:])
	if !ok {
		return 0, false
	}
	for range 10 - len(frac) {
		v *= 10
	}
	return v, true
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

// lastParsed is the date and time of day parseUTC read last, with its
// Unix time.
var lastParsed atomic.Pointer[secondText]

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
		// Nine digits, two at a time, without the trailing zeros.
		var frac [10]byte
		frac[0] = '.'
		frac[1] = byte('0' + ns/1e8)
		ns %= 1e8
		for i := 2; i < 10; i += 2 {
			d := ns / 1e6 // the next two digits
			frac[i], frac[i+1] = twoDigits[2*d], twoDigits[2*d+1]
			ns = ns % 1e6 * 100
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}

const twoDigits = "00010203040506070809101112131415161718192021222324252627282930313233343536373839" +
	"404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"

// secondText is the text of one second, "2006-01-02T15:04:05" in UTC.
type secondText struct {
	sec  int64 // Unix time
	text [19]byte
}

var lastSecond atomic.Pointer[secondText]
