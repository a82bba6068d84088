package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"os"
	"strings"
	"testing"
)

const sample = `goos: linux
pkg: github.com/busway/busway/benchmarks
BenchmarkInProc/256B/raw-chan-2         	  100000	        50 ns/op	        60.00 cpu-ns/msg	  20000000 msgs/s	       0 B/op	       0 allocs/op
BenchmarkInProc/256B/busway-chanbus-2   	  100000	       200 ns/op	       240.0 cpu-ns/msg	   5000000 msgs/s	       4 B/op	       0 allocs/op
BenchmarkInProc/256B/raw-chan-2         	  100000	        40 ns/op	  25000000 msgs/s	       0 B/op	       0 allocs/op
BenchmarkInProc/256B/busway-chanbus-2   	  100000	       250 ns/op	   4000000 msgs/s	       4 B/op	       0 allocs/op
BenchmarkInProc/256B/raw-chan-2         	  100000	        45 ns/op	  22000000 msgs/s	       0 B/op	       0 allocs/op
BenchmarkInProc/256B/busway-chanbus-2   	  100000	       238 ns/op	   4200000 msgs/s	       4 B/op	       0 allocs/op
BenchmarkLatency/nats/busway-2          	    1000	    400000 ns/op	      2500 msgs/s	      2500 offered-msgs/s	       100 p50-µs	       900 p99-µs	      2000 p99.9-µs	    7000 B/op	      80 allocs/op
BenchmarkLatency/nats/raw-nats-2        	    1000	    400000 ns/op	      2500 msgs/s	      2500 offered-msgs/s	       100 p50-µs	       600 p99-µs	      2000 p99.9-µs	    7000 B/op	      80 allocs/op
--- BENCH: something
PASS
pkg: github.com/busway/busway/outbox
BenchmarkRelay/sqlite-2                 	    2000	    500000 ns/op	      2500 events/s	     3.0 p50-ms
`

func TestParseCompareReport(t *testing.T) {
	cs, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.list) != 5 {
		t.Fatalf("%d cases, want 5: %v", len(cs.list), cs.byName)
	}
	st, ok := cs.get("InProc/256B/busway-chanbus").stat("msgs/s")
	if !ok || st.med != 4.2e6 || st.min != 4e6 || st.max != 5e6 || st.n != 3 {
		t.Fatalf("chanbus msgs/s = %+v", st)
	}
	if st, ok := cs.get("outbox: Relay/sqlite").stat("msgs/s"); !ok || st.med != 2500 {
		t.Fatalf("outbox msgs/s from events/s = %+v, %v", st, ok)
	}

	cmps := compare(cs)
	byTitle := map[string]*comparison{}
	for _, c := range cmps {
		byTitle[c.title] = c
	}
	c := byTitle["chanbus vs raw channel 256B"]
	if c == nil || math.Abs(c.ratio-4.2/22) > 1e-9 || math.Abs(c.ratioMin-0.16) > 1e-9 || math.Abs(c.ratioMax-0.25) > 1e-9 || c.met() {
		t.Fatalf("chanbus vs raw channel = %+v", c)
	}
	if c.cpu != 0.25 { // one run each: 60 ÷ 240
		t.Fatalf("chanbus vs raw channel CPU ratio = %v, want 0.25", c.cpu)
	}
	l := byTitle["latency p99, NATS vs nats.go"]
	if l == nil || l.ratio != 1.5 || l.met() || l.cpu != 0 {
		t.Fatalf("latency = %+v", l)
	}
	if _, ok := byTitle["Kafka consume c1 vs kgo group 256B"]; ok {
		t.Fatal("a comparison whose cases did not run is reported")
	}

	var md bytes.Buffer
	writeMarkdown(&md, env{cpu: "test cpu", cores: 2}, cs, cmps)
	for _, want := range []string{"| chanbus vs raw channel 256B | 4.20M msgs/s | 22.00M msgs/s | 0.19x | 0.16–0.25x | ≥ 0.2x (within 5x) | **missed** | 0.25x |",
		"| latency p99, NATS vs nats.go | 900 µs | 600 µs | 1.50x |", "| outbox: Relay/sqlite | 1 | 2.5k (2.5k–2.5k) | 500k | - | - |  | 2.5k events/s, 3.00 p50-ms |", "100 / 900 / 2.0k at 2.5k msgs/s"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("RESULTS.md lacks %q:\n%s", want, md.String())
		}
	}

	svg := chart(cmps, env{cpu: "cpu <&>", cores: 2})
	d := xml.NewDecoder(bytes.NewReader(svg))
	rects := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	if rects != 1+2 { // the background and one bar per comparison with a reference
		t.Fatalf("chart has %d rects, want 3", rects)
	}
}

func TestUpdateReadme(t *testing.T) {
	path := t.TempDir() + "/README.md"
	doc := "# x\n\nbefore\n" + readmeBegin + "\nold table\n" + readmeEnd + "\nafter\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := updateReadme(path, []byte("new table\n")); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(path)
	if want := "# x\n\nbefore\n" + readmeBegin + "\nnew table\n" + readmeEnd + "\nafter\n"; string(got) != want {
		t.Fatalf("README = %q, want %q", got, want)
	}
	if err := os.WriteFile(path, []byte("no markers"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := updateReadme(path, nil); err == nil {
		t.Fatal("no error for a README without markers")
	}
}

func TestMemoryCheck(t *testing.T) {
	long, _ := parse(strings.NewReader("BenchmarkA/x-2 100000 10 ns/op 1000 B/op\nBenchmarkA/y-2 100000 10 ns/op 5000 B/op\n"))
	short, _ := parse(strings.NewReader("BenchmarkA/x-2 3000 10 ns/op 1100 B/op\nBenchmarkA/y-2 3000 10 ns/op 1000 B/op\n"))
	var b bytes.Buffer
	writeMemoryCheck(&b, long, short)
	for _, want := range []string{"| A/x | 3000 | 1100 | 100000 | 1000 |  |", "| A/y | 3000 | 1000 | 100000 | 5000 | **grows** |", "grows with the run length in: A/y."} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("memory check lacks %q:\n%s", want, b.String())
		}
	}
}

// The outbox benchmarks report their same-call reference and ratio; the
// comparisons read them as absolute checks.
func TestOutboxComparisons(t *testing.T) {
	const out = `pkg: github.com/busway/busway/outbox
BenchmarkPGWriters/tx=1-2         	   10000	   2301782 ns/op	      1277 events/s	      1260 publish-only-events/s	      1500 raw-events/s	         0.8514 relay/raw
BenchmarkPGDrain-2                	   10000	    380378 ns/op	     61977 events/s	     36271 raw-events/s	         1.709 relay/raw
BenchmarkSQLiteDrain-2            	   10000	     73714 ns/op	     13566 events/s
BenchmarkPGLatency/Wake-2         	   10000	   4606521 ns/op	         0.3670 p50-ms	        16.20 p99-ms	         1.959 publish-p50-ms
BenchmarkNATSDrain/sqlite-2       	   10000	     74971 ns/op	     32364 events/s	     61954 raw-events/s	         0.5224 relay/raw
`
	cs, err := parse(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*comparison{}
	for _, c := range compare(cs) {
		got[c.title] = c
	}
	for title, want := range map[string]struct {
		v   float64
		met bool
	}{
		"outbox: 4 writers + relay vs insert-only, 1-row tx":   {0.8514, false},
		"outbox: PostgreSQL drain to chanbus vs select+delete": {1.709, true},
		"outbox: PostgreSQL drain to chanbus, events/s":        {61977, false},
		"outbox: SQLite drain to chanbus, events/s":            {13566, true},
		"outbox: SQLite drain to NATS vs PublishMsgAsync":      {0.5224, true},
		"outbox: commit-to-handler p50 ms at 500/s":            {0.367, true},
		"outbox: commit-to-handler p99 ms at 500/s":            {16.2, false},
	} {
		c := got[title]
		if c == nil || math.Abs(c.ratio-want.v) > 1e-9 || c.met() != want.met {
			t.Errorf("%s = %+v, want %v (met %v)", title, c, want.v, want.met)
		}
	}
	if _, ok := got["outbox: 4 writers + relay vs insert-only, 10-row tx"]; ok {
		t.Error("a comparison whose case did not run is reported")
	}
}
