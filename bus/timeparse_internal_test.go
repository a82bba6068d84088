package bus

import (
	"math/rand/v2"
	"testing"
	"time"
)

var timeSeeds = []string{"2026-12-01T11:27:55.123456789Z", "2026-12-01T11:27:55Z", "2026-12-01T11:27:55.1Z", "2026-12-01T11:27:55.120Z",
	"2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2000-02-29T23:59:59.999999999Z", "2026-04-31T00:00:00Z",
	"2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z", "2026-01-00T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:60:00Z",
	"2026-01-01T00:00:60Z", "2026-01-01t00:00:00Z", "2026-01-01T00:00:00z", "2026-01-01T00:00:00.Z", "2026-01-01T00:00:00.1234567891Z",
	"2026-01-01T00:00:00+02:00", "2026-01-01T00:00:00.5-07:00", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
	"+026-01-01T00:00:00Z", "2026-1-01T00:00:00Z", "2026-01-01T00:00:00,5Z", "2026-01-01T00:00:00.+5Z", "yesterday", ""}

func TestTimeMatchesPackageTime(t *testing.T) {
	for _, s := range timeSeeds {
		checkParseTime(t, s)
	}
	for _, tm := range []time.Time{time.Now(), time.Unix(0, 0), time.Date(2026, 1, 2, 3, 4, 5, 600, time.FixedZone("x", 3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 100000000, time.UTC)} {
		checkParseTime(t, tm.UTC().Format(time.RFC3339Nano))
	}
}

func checkParseTime(t *testing.T, s string) {
	t.Helper()
	want, wantErr := time.Parse(time.RFC3339Nano, s)
	got, err := parseTime(s)
	if (err != nil) != (wantErr != nil) || !got.Equal(want) || got.Location().String() != want.Location().String() {
		t.Fatalf("parseTime(%q) = %v, %v; time.Parse gives %v, %v", s, got, err, want, wantErr)
	}
	// What parseUTC reads is the very value time.Parse gives (a time in
	// time.UTC; time.Parse makes a new zone for an offset each time, so
	// only those are compared as above).
	if fast, ok := parseUTC(s); ok && fast != want {
		t.Fatalf("parseUTC(%q) = %#v; time.Parse gives %#v", s, fast, want)
	}
}

func FuzzTime(f *testing.F) {
	for _, s := range timeSeeds {
		f.Add(s, int64(len(s))*1e15+int64(len(s)))
	}
	f.Fuzz(func(t *testing.T, s string, ns int64) {
		checkParseTime(t, s)
		checkParseTime(t, time.Unix(0, ns).UTC().Format(time.RFC3339Nano))
	})
}

// appendTime writes what AppendFormat(time.RFC3339Nano) writes, for
// times within one second (the remembered second's text), across seconds,
// and in other locations.
func TestAppendTimeMatchesAppendFormat(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 12, 2, 6, 7, 1, 0, time.UTC)
	east := time.FixedZone("east", 5*3600+1800)
	times := []time.Time{base, base.Add(time.Nanosecond), base.Add(999999999), base.Add(time.Second),
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 500000000, time.UTC), base.In(east).Add(123456000)}
	for range 2000 {
		switch rng.IntN(3) {
		case 0: // the same second as the last one
			last := times[len(times)-1]
			times = append(times, last.Truncate(time.Second).Add(time.Duration(rng.IntN(1e9))))
		case 1: // microseconds, as clock.Now gives
			times = append(times, base.Add(time.Duration(rng.Int64N(1e12))).Truncate(time.Microsecond))
		default:
			times = append(times, time.Unix(rng.Int64N(253402300799), rng.Int64N(1e9)).In(east))
		}
	}
	for _, tm := range times {
		want := tm.UTC().Format(time.RFC3339Nano)
		if got := string(appendTime([]byte("x"), tm)); got != "x"+want {
			t.Fatalf("appendTime(%v) = %q, want %q", tm, got[1:], want)
		}
	}
}

// parseUTC reads a time of the second it read last from the remembered
// second and the new fraction: every fraction, valid or not, after a valid
// time of that second, gives what time.Parse gives.
func TestParseTimeOfTheLastSecond(t *testing.T) {
	fracs := []string{"", ".", ".0", ".5", ".123456789", ".1234567890", ".12345678x", "x", ".-1", "..1", ".000000000",
		".999999999", " ", ".1 "}
	for _, sec := range []string{"2026-01-01T00:00:00", "2026-12-02T06:07:01", "0000-01-01T00:00:00", "9999-12-31T23:59:59"} {
		for _, f := range fracs {
			checkParseTime(t, sec+".25Z") // remembered
			checkParseTime(t, sec+f+"Z")
			checkParseTime(t, sec+f)
		}
	}
}
