package main

import (
	"bufio"
	"io"
	"slices"
	"strconv"
	"strings"
)

// A result is every run of one case: per unit ("msgs/s", "ns/op",
// "allocs/op", "B/op", "p99-µs", ...) the value of each run, in run order.
type result struct {
	name  string // "KafkaPublish/256B/busway-batch", "outbox: Relay/sqlite"
	order int
	runs  map[string][]float64
	iters []float64 // b.N of each run
}

type cases struct {
	byName map[string]*result
	list   []*result
}

func (c *cases) get(name string) *result { return c.byName[name] }

// parse reads go test -bench output. Case names lose their "Benchmark"
// prefix and GOMAXPROCS suffix; cases outside this module's package are
// prefixed with their package ("outbox: ").
func parse(r io.Reader) (*cases, error) {
	c := &cases{byName: map[string]*result{}}
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(strings.TrimSpace(p), "github.com/busway/busway")
			pkg = strings.TrimPrefix(pkg, "/")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		if pkg != "benchmarks" && pkg != "" {
			name = pkg + ": " + name
		}
		res := c.byName[name]
		if res == nil {
			res = &result{name: name, order: len(c.list), runs: map[string][]float64{}}
			c.byName[name] = res
			c.list = append(c.list, res)
		}
		n, _ := strconv.ParseFloat(f[1], 64)
		res.iters = append(res.iters, n)
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			res.runs[f[i+1]] = append(res.runs[f[i+1]], v)
		}
		// A case without msgs/s: its events/s (the outbox relay's), else
		// one message per iteration.
		if len(res.runs["msgs/s"]) < len(res.runs["ns/op"]) {
			if ev := res.runs["events/s"]; len(ev) == len(res.runs["ns/op"]) {
				res.runs["msgs/s"] = append(res.runs["msgs/s"], ev[len(ev)-1])
			} else if ns := res.runs["ns/op"]; ns[len(ns)-1] > 0 {
				res.runs["msgs/s"] = append(res.runs["msgs/s"], 1e9/ns[len(ns)-1])
			}
		}
	}
	return c, sc.Err()
}

// stat is the median, min and max of one unit of a result.
type stat struct {
	med, min, max float64
	n             int
}

func (r *result) stat(unit string) (stat, bool) {
	if r == nil {
		return stat{}, false
	}
	v := slices.Clone(r.runs[unit])
	if len(v) == 0 {
		return stat{}, false
	}
	slices.Sort(v)
	s := stat{min: v[0], max: v[len(v)-1], n: len(v)}
	if len(v)%2 == 1 {
		s.med = v[len(v)/2]
	} else {
		s.med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return s, true
}
