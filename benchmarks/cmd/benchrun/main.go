// Command benchrun runs the benchmark suite and reports it: every case of
// this module (and the outbox relay benchmarks of the main module, when it
// has them) several times, then one table per case with the median and the
// min-max, and the comparisons of busway with each reference measured in the
// same run, against the targets. It writes RESULTS.md, results.svg (a bar
// chart of the comparisons) and results.txt (the raw go test output, for
// benchstat) into -out, and the comparisons into the README between its
// bench markers.
//
//	go run ./cmd/benchrun            # make bench: the full suite, 6-10 minutes (host speed)
//	go run ./cmd/benchrun -short     # make bench-short: a smoke run of every case
package main

import (
	"bytes"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// A step is the cases matching pattern, each with a fixed message count (or
// a duration), run in count passes.
type step struct {
	pattern   string
	benchtime string // "50000x" or "2s"
	count     int
}

// plan: counts chosen so that each of busway's cases runs for half a second
// to a second here (the slow references get fewer messages than busway's
// cases beside them; the raw channel, at 40 ns a message, a tenth of a
// second), and the whole suite in 6-10 minutes (host speed) on 2 cores (outbox included). Counts that
// made a case a few tens of milliseconds measured its start more than its
// pace: the typed path's five runs spread over 2x at 20,000 messages.
var plan = []step{
	{`^BenchmarkInProc$/./(raw|busway)`, "3000000x", 5},
	{`^BenchmarkInProc$/./watermill`, "200000x", 5},
	{`^BenchmarkTyped$/./busway`, "300000x", 5},
	{`^BenchmarkTyped$/./watermill`, "30000x", 5},
	{`^BenchmarkKafkaPublish$`, "200000x", 3},
	// Kafka consume at 4 KiB: a quarter of the messages, the same time. At
	// 200,000 the prefilled log (800 MB, in kfake, in the process) made
	// every client's runs bimodal (kgo's and busway's alike: 3k or 8-10k
	// ns a message from one run to the next, the slow ones in memory moves
	// of kfake's fetch handling); at 40,000-50,000 they are not.
	// kafka-go's commit per message, at 75-90 µs a message, gets a tenth of
	// the messages (3 s a run instead of 15).
	{`^BenchmarkKafkaConsume$/^256B$/(busway|kgo)`, "200000x", 3},
	{`^BenchmarkKafkaConsume$/^256B$/raw`, "30000x", 3},
	{`^BenchmarkKafkaConsume$/^4KiB$/(busway|kgo)`, "50000x", 3},
	{`^BenchmarkKafkaConsume$/^4KiB$/raw`, "20000x", 3},
	{`^BenchmarkKafkaSlowHandler$/^busway`, "20000x", 3},
	{`^BenchmarkKafkaSlowHandler$/^raw`, "1500x", 3},
	// One synchronous publish is a round trip (120-140 µs here): 15,000
	// of them are 2 s a case; the batched cases, 8x faster, keep 50,000.
	{`^BenchmarkNATSPublish$/./(busway-single|raw-sync)`, "15000x", 3},
	{`^BenchmarkNATSPublish$/./(busway-batch|raw-async)`, "50000x", 3},
	// NATS consume: 5 runs, its noisiest case here (two identical
	// binaries' single runs gave 0.37x to 1.86x of each other).
	{`^BenchmarkNATSConsume$`, "100000x", 5},
	{`^BenchmarkLatency$`, "1.5s", 3},
}

// outboxPlan: the outbox relay benchmarks of the main module, 3 runs each
// (1 with -short, at 200x). Fixed counts, not a duration: at "1s" go test
// gave BenchmarkPGDrain a backlog of about 3,400 rows, which measured the
// relay's start more than its drain (the target is for a 200,000-row
// backlog), and BenchmarkPGWriters turns of a few hundred events. About
// 2.5 minutes here.
var outboxPlan = []step{
	{`^BenchmarkPGWriters$`, "20000x", 3},
	{`^BenchmarkPGDrain$`, "200000x", 3},
	{`^BenchmarkPGLatency$`, "2000x", 3},
	{`^Benchmark(SQLiteDrain|NATSDrain)$`, "100000x", 3},
}

// shortPlan: every case once with a few thousand messages.
var shortPlan = []step{
	{`^BenchmarkInProc$`, "5000x", 1},
	{`^BenchmarkTyped$`, "3000x", 1},
	{`^BenchmarkKafkaPublish$`, "3000x", 1},
	{`^BenchmarkKafkaConsume$`, "3000x", 1},
	{`^BenchmarkKafkaSlowHandler$/^busway`, "2000x", 1},
	{`^BenchmarkKafkaSlowHandler$/^raw`, "200x", 1},
	{`^BenchmarkNATSPublish$`, "2000x", 1},
	{`^BenchmarkNATSConsume$`, "3000x", 1},
	{`^BenchmarkLatency$`, "0.3s", 1},
}

func main() {
	short := flag.Bool("short", false, "smoke run: every case once with a few thousand messages")
	out := flag.String("out", ".", "directory for RESULTS.md, results.svg and results.txt")
	outboxTime := flag.String("outbox-benchtime", "", "benchtime of all the main module's outbox benchmarks (default: each its own, see outboxPlan; 200x with -short)")
	readme := flag.String("readme", "../README.md", "README whose bench markers get the comparisons (not with -short; empty: none)")
	flag.Parse()
	if *short {
		*readme = ""
	}
	if err := run(*short, *out, *outboxTime, *readme); err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		os.Exit(1)
	}
}

func run(short bool, out, outboxTime, readme string) error {
	steps, outboxSteps := plan, slices.Clone(outboxPlan)
	if short {
		steps = shortPlan
		outboxTime = cmp.Or(outboxTime, "200x")
	}
	for i := range outboxSteps {
		s := &outboxSteps[i]
		s.benchtime = cmp.Or(outboxTime, s.benchtime)
		if short {
			s.count = 1
		}
	}
	start := time.Now()
	env := machine()
	tmp, err := os.MkdirTemp("", "benchrun")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "benchmarks.test")
	if err := sh(os.Stderr, ".", "go", "test", "-c", "-o", bin, "."); err != nil {
		return fmt.Errorf("building the benchmarks: %w", err)
	}
	// Pass after pass of the whole plan, each case once per pass: a case and
	// its references run minutes apart at most, never all of one before all
	// of the other, so a change in the machine's load hits both.
	var raw bytes.Buffer
	passes := 0
	for _, s := range steps {
		passes = max(passes, s.count)
	}
	for pass := 1; pass <= passes; pass++ {
		for _, s := range steps {
			if pass > s.count {
				continue
			}
			fmt.Fprintf(os.Stderr, "== pass %d/%d: %s (%s)\n", pass, passes, s.pattern, s.benchtime)
			err := sh(io.MultiWriter(&raw, os.Stdout), ".", bin, "-test.run", "^$", "-test.bench", s.pattern,
				"-test.benchtime", s.benchtime, "-test.count", "1", "-test.benchmem", "-test.timeout", "30m")
			if err != nil {
				return fmt.Errorf("%s: %w", s.pattern, err)
			}
		}
	}
	// The memory check: every case once more with the smoke run's few
	// thousand messages; its B/msg beside the full run's shows whether a
	// case's memory per message grows with the run length.
	var small *cases
	if !short {
		var sraw bytes.Buffer
		for _, s := range shortPlan {
			fmt.Fprintf(os.Stderr, "== memory check: %s (%s)\n", s.pattern, s.benchtime)
			if err := sh(io.MultiWriter(&sraw, os.Stdout), ".", bin, "-test.run", "^$", "-test.bench", s.pattern,
				"-test.benchtime", s.benchtime, "-test.count", "1", "-test.benchmem", "-test.timeout", "30m"); err != nil {
				return fmt.Errorf("memory check %s: %w", s.pattern, err)
			}
		}
		if small, err = parse(bytes.NewReader(sraw.Bytes())); err != nil {
			return err
		}
	}
	// The outbox relay benchmarks live in the main module (package outbox).
	if hasBenchmarks("../outbox") {
		obin := filepath.Join(tmp, "outbox.test")
		if err := sh(os.Stderr, "..", "go", "test", "-c", "-o", obin, "./outbox/"); err != nil {
			return fmt.Errorf("building the outbox benchmarks: %w", err)
		}
		for _, s := range outboxSteps {
			fmt.Fprintf(os.Stderr, "== outbox: %s (%s, %d runs)\n", s.pattern, s.benchtime, s.count)
			// Run in ../outbox, as go test would: its tests read testdata there.
			if err := sh(io.MultiWriter(&raw, os.Stdout), "../outbox", obin, "-test.run", "^$", "-test.bench", s.pattern, "-test.benchmem",
				"-test.benchtime", s.benchtime, "-test.count", fmt.Sprint(s.count), "-test.timeout", "30m"); err != nil {
				return fmt.Errorf("outbox benchmarks %s: %w", s.pattern, err)
			}
		}
	}
	cases, err := parse(bytes.NewReader(raw.Bytes()))
	if err != nil {
		return err
	}
	if len(cases.list) == 0 {
		return errors.New("no benchmark results in the output")
	}
	env.duration = time.Since(start)
	env.loadEnd = loadavg()
	env.short = short
	cmps := compare(cases)

	var md bytes.Buffer
	writeMarkdown(&md, env, cases, cmps)
	if small != nil {
		writeMemoryCheck(&md, cases, small)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "RESULTS.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "results.txt"), raw.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "results.svg"), chart(cmps, env), 0o644); err != nil {
		return err
	}
	if readme != "" {
		if err := updateReadme(readme, readmeBlock(env, cmps)); err != nil {
			return err
		}
	}
	fmt.Println()
	writeComparisons(os.Stdout, cmps)
	fmt.Fprintf(os.Stderr, "wrote %s/RESULTS.md, results.svg, results.txt in %v\n", out, env.duration.Round(time.Second))
	return nil
}

func sh(w io.Writer, dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout = w
	cmd.Stderr = os.Stderr
	return cmd.Run()
}

// hasBenchmarks reports whether a package directory has a Benchmark func.
func hasBenchmarks(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && bytes.Contains(b, []byte("\nfunc Benchmark")) {
			return true
		}
	}
	return false
}

type env struct {
	date, cpu, kernel, mem, goVersion, loadStart, loadEnd, busway string
	cores                                                         int
	modules                                                       [][2]string
	duration                                                      time.Duration
	short                                                         bool
}

func machine() env {
	e := env{
		date:      time.Now().UTC().Format("2006-01-02 15:04 MST"),
		cores:     runtime.NumCPU(),
		goVersion: strings.TrimSpace(output(".", "go", "env", "GOVERSION")) + " " + runtime.GOOS + "/" + runtime.GOARCH,
		loadStart: loadavg(),
		kernel:    strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
	}
	for _, l := range strings.Split(readFile("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			e.cpu = strings.TrimSpace(v)
			break
		}
	}
	for _, l := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			e.mem = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	e.busway = strings.TrimSpace(output("..", "git", "describe", "--always", "--dirty", "--exclude", "*"))
	for _, m := range []string{
		"github.com/ThreeDotsLabs/watermill", "github.com/segmentio/kafka-go", "github.com/twmb/franz-go",
		"github.com/twmb/franz-go/pkg/kfake", "github.com/nats-io/nats.go", "github.com/nats-io/nats-server/v2",
	} {
		v := strings.TrimSpace(output(".", "go", "list", "-m", "-f", "{{.Version}}", m))
		e.modules = append(e.modules, [2]string{m, v})
	}
	return e
}

func loadavg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

func output(dir, name string, args ...string) string {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	b, err := cmd.Output()
	if err != nil {
		return "?"
	}
	return string(b)
}
