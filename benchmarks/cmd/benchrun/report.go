package main

import (
	"bytes"
	"fmt"
	"html"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

func human(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func value(v float64, unit string) string {
	switch unit {
	case "msgs/s":
		return human(v) + " msgs/s"
	case "p99-µs":
		return human(v) + " µs"
	case "allocs/op":
		return fmt.Sprintf("%.0f allocs", v)
	}
	return human(v) + " " + unit
}

func ratioText(c *comparison) string {
	if c.ref == "" {
		return value(c.ratio, c.unit)
	}
	return fmt.Sprintf("%.2fx", c.ratio)
}

func rangeText(c *comparison) string {
	if c.ref == "" {
		if c.ratioMin == c.ratioMax {
			return ""
		}
		return human(c.ratioMin) + "–" + human(c.ratioMax)
	}
	if math.IsNaN(c.ratioMin) || c.ratioMin == c.ratioMax {
		return ""
	}
	return fmt.Sprintf("%.2f–%.2fx", c.ratioMin, c.ratioMax)
}

func verdict(c *comparison) string {
	switch {
	case c.target == 0:
		return ""
	case c.met():
		return "met"
	default:
		return "**missed**"
	}
}

func writeComparisons(w io.Writer, cmps []*comparison) {
	fmt.Fprintln(w, "| comparison | busway | reference | ratio (median) | range of the runs | target | | CPU per message, reference ÷ busway |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, c := range cmps {
		ref := "—"
		if c.ref != "" {
			ref = value(c.rMed, c.unit)
		}
		cpu := ""
		if c.cpu > 0 {
			cpu = fmt.Sprintf("%.2fx", c.cpu)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", c.title, value(c.bMed, c.unit), ref,
			ratioText(c), rangeText(c), c.targetText(), verdict(c), cpu)
	}
}

func writeMarkdown(w io.Writer, e env, cs *cases, cmps []*comparison) {
	fmt.Fprintln(w, "# busway benchmark results")
	fmt.Fprintln(w)
	kind := "`make bench`"
	if e.short {
		kind = "`make bench-short` (smoke run: one run of a few thousand messages per case; not for quoting)"
	}
	fmt.Fprintf(w, "Written by %s (`go run ./cmd/benchrun` in benchmarks/) on %s; the run took %v.\n", kind, e.date, e.duration.Round(time.Second))
	fmt.Fprintln(w, "Ratios compare cases measured in the same run; the machine was shared with other")
	fmt.Fprintln(w, "work (see the load average), so absolute figures are noisy and the ratios are what counts.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| | |")
	fmt.Fprintln(w, "|---|---|")
	fmt.Fprintf(w, "| machine | %s, %d cores, %s memory, Linux %s |\n", e.cpu, e.cores, e.mem, e.kernel)
	fmt.Fprintf(w, "| load average (1, 5, 15 min) | %s at the start, %s at the end |\n", e.loadStart, e.loadEnd)
	fmt.Fprintf(w, "| Go | %s |\n", e.goVersion)
	fmt.Fprintf(w, "| busway | %s |\n", e.busway)
	for _, m := range e.modules {
		fmt.Fprintf(w, "| %s | %s |\n", m[0], m[1])
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Comparisons")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Throughput: busway's msgs/s ÷ the reference's (higher is better). Latency: busway's p99 ÷")
	fmt.Fprintln(w, "the reference's (lower is better). The ratio is of the medians; the range is of the")
	fmt.Fprintln(w, "ratios of each pass's pair (every pass runs each case once, busway's beside its references).")
	fmt.Fprintln(w, "The last column is the reference's process CPU time per message ÷ busway's (higher is")
	fmt.Fprintln(w, "better; embedded brokers included): it swings less with the machine's load than the")
	fmt.Fprintln(w, "wall-clock throughput the targets are set on.")
	fmt.Fprintln(w)
	writeComparisons(w, cmps)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "![busway against each reference](results.svg)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Every case")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Median of the runs (min–max). One iteration is one message. Latency cases send at the")
	fmt.Fprintln(w, "offered rate, so their msgs/s is that rate.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | runs | msgs/s | ns/msg | allocs/msg | B/msg | p50 / p99 / p99.9 µs | other metrics (median) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range cs.list {
		m, _ := r.stat("msgs/s")
		ns, _ := r.stat("ns/op")
		al, okA := r.stat("allocs/op")
		by, okB := r.stat("B/op")
		lat := ""
		if p50, ok := r.stat("p50-µs"); ok {
			p99, _ := r.stat("p99-µs")
			p999, _ := r.stat("p99.9-µs")
			lat = human(p50.med) + " / " + human(p99.med) + " / " + human(p999.med)
			if off, ok := r.stat("offered-msgs/s"); ok {
				lat += " at " + human(off.med) + " msgs/s"
			}
		}
		allocs, bytesPer := "-", "-"
		if okA {
			allocs = fmt.Sprintf("%.0f", al.med)
		}
		if okB {
			bytesPer = fmt.Sprintf("%.0f", by.med)
		}
		var other []string
		for _, u := range slices.Sorted(maps.Keys(r.runs)) {
			switch u {
			case "msgs/s", "ns/op", "allocs/op", "B/op", "p50-µs", "p99-µs", "p99.9-µs", "offered-msgs/s":
				continue
			}
			st, _ := r.stat(u)
			other = append(other, human(st.med)+" "+u)
		}
		fmt.Fprintf(w, "| %s | %d | %s (%s–%s) | %s | %s | %s | %s | %s |\n", r.name, m.n, human(m.med), human(m.min), human(m.max),
			human(ns.med), allocs, bytesPer, lat, strings.Join(other, ", "))
	}
}

// chart draws the comparisons as horizontal bars on a log scale, every bar
// as "higher is better": throughput busway ÷ reference, latency reference
// p99 ÷ busway p99. Green bars meet their target (the black tick), red ones
// miss it, grey ones have none.
func chart(cmps []*comparison, e env) []byte {
	type bar struct {
		label          string
		v, target      float64
		met, hasTarget bool
	}
	var bars []bar
	for _, c := range cmps {
		if c.ref == "" || c.ratio <= 0 {
			continue
		}
		b := bar{label: c.title, v: c.ratio, target: c.target, met: c.met(), hasTarget: c.target > 0}
		if c.lowerBetter {
			b.v = 1 / c.ratio
			if c.target > 0 {
				b.target = 1 / c.target
			}
			b.label = strings.Replace(b.label, "latency p99", "latency p99 (inverse)", 1)
		}
		bars = append(bars, b)
	}
	lo, hi := 0.1, 10.0
	for _, b := range bars {
		lo, hi = math.Min(lo, b.v), math.Max(hi, b.v)
		if b.hasTarget {
			lo, hi = math.Min(lo, b.target), math.Max(hi, b.target)
		}
	}
	dlo, dhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	const (
		width, left, right, top, rowH = 960.0, 380.0, 900.0, 60.0, 22.0
	)
	height := top + rowH*float64(len(bars)) + 70
	x := func(v float64) float64 {
		return left + (math.Log10(v)-dlo)/(dhi-dlo)*(right-left)
	}
	var s bytes.Buffer
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&s, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&s, `<text x="%.0f" y="22" font-size="15" font-weight="bold">busway ÷ reference, same run (median; log scale; higher is better)</text>`+"\n", 10.0)
	fmt.Fprintf(&s, `<text x="%.0f" y="42" fill="#555">%s · %s, %d cores · %s · load %s</text>`+"\n", 10.0,
		html.EscapeString(e.date), html.EscapeString(e.cpu), e.cores, html.EscapeString(e.goVersion), html.EscapeString(e.loadStart))
	bottom := top + rowH*float64(len(bars))
	for d := dlo; d <= dhi; d++ {
		v := math.Pow(10, d)
		stroke := "#ddd"
		if d == 0 {
			stroke = "#888"
		}
		fmt.Fprintf(&s, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="%s"/>`+"\n", x(v), top-4, x(v), bottom, stroke)
		fmt.Fprintf(&s, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="#555">%sx</text>`+"\n", x(v), bottom+16, strings.TrimSuffix(fmt.Sprintf("%g", v), ".0"))
	}
	for i, b := range bars {
		y := top + rowH*float64(i)
		color := "#9e9e9e"
		if b.hasTarget {
			color = "#c62828"
			if b.met {
				color = "#2e7d32"
			}
		}
		fmt.Fprintf(&s, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-8, y+rowH/2+4, html.EscapeString(b.label))
		fmt.Fprintf(&s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", left, y+3, math.Max(1, x(b.v)-left), rowH-6, color)
		fmt.Fprintf(&s, `<text x="%.1f" y="%.1f" fill="#222">%.2fx</text>`+"\n", x(b.v)+4, y+rowH/2+4, b.v)
		if b.hasTarget {
			fmt.Fprintf(&s, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-width="2"/>`+"\n", x(b.target), y+1, x(b.target), y+rowH-1)
		}
	}
	fmt.Fprintf(&s, `<text x="10" y="%.0f" fill="#555">green: target met · red: target missed · grey: no target · black tick: the target · latency bars: reference p99 ÷ busway p99</text>`+"\n", bottom+40)
	s.WriteString("</svg>\n")
	return s.Bytes()
}

const (
	readmeBegin = "<!-- bench:begin (written by make bench) -->"
	readmeEnd   = "<!-- bench:end -->"
)

// readmeBlock is what make bench writes into the README between the
// markers: the run's machine and versions, and the comparisons.
func readmeBlock(e env, cmps []*comparison) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Run of %s on %s, %d cores (load average %s at the start, %s at the end), %s; busway %s",
		e.date, e.cpu, e.cores, e.loadStart, e.loadEnd, e.goVersion, e.busway)
	for _, m := range e.modules {
		fmt.Fprintf(&b, ", %s %s", m[0][strings.LastIndexByte(m[0], '/')+1:], m[1])
	}
	fmt.Fprint(&b, ".\n\n")
	writeComparisons(&b, cmps)
	return b.Bytes()
}

// updateReadme replaces what is between the markers in the file at path.
func updateReadme(path string, block []byte) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	i, j := bytes.Index(old, []byte(readmeBegin)), bytes.Index(old, []byte(readmeEnd))
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %q ... %q markers", path, readmeBegin, readmeEnd)
	}
	var b bytes.Buffer
	b.Write(old[:i+len(readmeBegin)])
	b.WriteString("\n")
	b.Write(block)
	b.Write(old[j:])
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// grows reports whether a case's B/msg in the long run exceeds the short
// run's by more than a quarter and 256 bytes (noise: pooled buffers, the
// in-process broker's own allocations).
func grows(long, short float64) bool { return long > short*1.25 && long-short > 256 }

// writeMemoryCheck compares each case's B/msg in the full run with the
// same case's in a short run.
func writeMemoryCheck(w io.Writer, long, short *cases) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Memory per message against the run length")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "B/msg of the full run's cases (median) beside one short run of each (the smoke run's")
	fmt.Fprintln(w, "counts). A case grows when its long run's B/msg exceeds the short run's by more than a")
	fmt.Fprintln(w, "quarter and 256 B. Broker cases include the in-process broker's allocations.")
	fmt.Fprintln(w)
	var grew []string
	fmt.Fprintln(w, "| case | msgs, short run | B/msg | msgs, full run | B/msg | |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range long.list {
		s := short.get(r.name)
		lb, ok1 := r.stat("B/op")
		sb, ok2 := s.stat("B/op")
		if !ok1 || !ok2 || len(s.iters) == 0 || len(r.iters) == 0 {
			continue
		}
		v := ""
		if grows(lb.med, sb.med) {
			v, grew = "**grows**", append(grew, r.name)
		}
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f | %.0f | %s |\n", r.name, s.iters[0], sb.med, r.iters[0], lb.med, v)
	}
	fmt.Fprintln(w)
	if len(grew) == 0 {
		fmt.Fprintln(w, "No case's B/msg grows with the run length.")
	} else {
		fmt.Fprintf(w, "B/msg grows with the run length in: %s.\n", strings.Join(grew, ", "))
	}
}
