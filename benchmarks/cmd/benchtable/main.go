// Command benchtable reads `go test -bench` output on stdin and prints one
// table: per comparison benchmark, busway's variant beside the raw clients
// and peers measured in the same run, with msgs/s, ns/msg, allocs/msg and
// the ratio of busway's throughput to each reference.
//
// A comparison benchmark is a parent benchmark whose sub-benchmarks are the
// variants: "busway" and references such as "raw-chan", "raw-kafka-go",
// "kgo" or "watermill". Each iteration is one message. A group without a
// "busway" variant is compared against its first variant.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

type row struct {
	variant        string
	nsPerMsg       float64
	msgsPerSec     float64
	allocsPerMsg   float64
	haveAllocs     bool
	haveThroughput bool
}

type group struct {
	name string
	rows []*row
}

func main() {
	groups, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(groups) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no comparison benchmarks (Benchmark<Name>/<variant>) in the input")
		os.Exit(1)
	}
	write(os.Stdout, groups)
}

func parse(r io.Reader) ([]*group, error) {
	var (
		pkg    string
		order  []*group
		byName = map[string]*group{}
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, "github.com/busway/busway/")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // strip the GOMAXPROCS suffix
			}
		}
		parent, variant, ok := strings.Cut(strings.TrimPrefix(name, "Benchmark"), "/")
		if !ok {
			continue
		}
		rw := &row{variant: variant}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				rw.nsPerMsg = v
			case "msgs/s":
				rw.msgsPerSec, rw.haveThroughput = v, true
			case "allocs/op":
				rw.allocsPerMsg, rw.haveAllocs = v, true
			}
		}
		if !rw.haveThroughput && rw.nsPerMsg > 0 {
			rw.msgsPerSec, rw.haveThroughput = 1e9/rw.nsPerMsg, true
		}
		key := pkg + " " + parent
		g := byName[key]
		if g == nil {
			g = &group{name: key}
			byName[key] = g
			order = append(order, g)
		}
		g.rows = append(g.rows, rw)
	}
	return order, sc.Err()
}

func write(w io.Writer, groups []*group) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "benchmark\tvariant\tmsgs/s\tns/msg\tallocs/msg\tbusway (or first) ÷ this\t")
	for _, g := range groups {
		base := g.rows[0]
		for _, r := range g.rows {
			if r.variant == "busway" {
				base = r
			}
		}
		for i, r := range g.rows {
			name := ""
			if i == 0 {
				name = g.name
			}
			allocs := "-"
			if r.haveAllocs {
				allocs = strconv.FormatFloat(r.allocsPerMsg, 'f', -1, 64)
			}
			ratio := ""
			if r != base && r.msgsPerSec > 0 {
				ratio = fmt.Sprintf("%.2fx", base.msgsPerSec/r.msgsPerSec)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%s\t%s\t\n", name, r.variant, r.msgsPerSec, r.nsPerMsg, allocs, ratio)
		}
	}
	tw.Flush()
}
