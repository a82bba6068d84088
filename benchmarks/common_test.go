package benchmarks

import (
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Payload sizes every throughput case runs at: the body of each message
// (for the typed cases, the size of the event's Note field, so that the
// JSON body is about this size).
var sizes = []struct {
	name string
	n    int
}{
	{"256B", 256},
	{"4KiB", 4096},
}

// forSizes runs f as a sub-benchmark per payload size.
func forSizes(b *testing.B, f func(b *testing.B, body []byte)) {
	for _, s := range sizes {
		body := payload(s.n)
		b.Run(s.name, func(b *testing.B) { f(b, body) })
	}
}

// payload is n printable bytes (valid in a JSON string without escaping),
// pseudo-random so that no compression shrinks them: a compressible body
// would measure the codec, not the bus.
func payload(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
	r := rand.New(rand.NewPCG(uint64(n), 12))
	p := make([]byte, n)
	for i := range p {
		p[i] = alphabet[r.IntN(len(alphabet))]
	}
	return p
}

// keys is the key space of keyed cases: 1000 keys, like an aggregate ID.
var keys = func() []string {
	k := make([]string, 1000)
	for i := range k {
		k[i] = "k-" + strconv.Itoa(i)
	}
	return k
}()

// OrderPlaced is the event every typed case publishes and decodes.
type OrderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
	Note   string `json:"note"`
}

// startMeasuring resets the clock and the allocation counters: everything
// before it (servers, clusters, prefilled topics, subscriptions that are
// not part of the case) is not measured.
func startMeasuring(b *testing.B) {
	b.ReportAllocs()
	if path := os.Getenv("BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		profiling = true
		b.Cleanup(func() { f.Close() })
	}
	cpuStart = processCPU()
	b.ResetTimer()
}

// profiling is whether startMeasuring started the CPU profile that
// BENCH_CPUPROFILE asks for: the measured part of each run, without its
// set-up (servers, prefilled topics), which -cpuprofile would include.
// Each run overwrites the file: select one case with -bench, and the file
// holds its last (longest) run.
var profiling bool

// report stops the clock and reports the throughput, and the process's
// CPU time per message (user and system, every goroutine's, the embedded
// broker's included) since startMeasuring: on a shared machine the
// wall-clock figures swing with the load, the CPU per message much less.
// Every case's iteration is one message.
func report(b *testing.B) {
	b.StopTimer()
	if profiling {
		pprof.StopCPUProfile()
		profiling = false
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(processCPU()-cpuStart)/float64(b.N), "cpu-ns/msg")
}

// cpuStart is the process's CPU time when the running case started
// measuring (cases run one at a time).
var cpuStart time.Duration

// processCPU returns the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// waitDone waits for done, failing the case after d with what was seen.
func waitDone(b *testing.B, done <-chan struct{}, d time.Duration, what func() string) {
	b.Helper()
	select {
	case <-done:
	case <-time.After(d):
		b.Fatalf("timed out after %v: %s", d, what())
	}
}

// uniq makes names unique within the process (topics, groups, streams).
var uniqSeq int

func uniq(prefix string) string {
	uniqSeq++
	return prefix + "-" + strconv.Itoa(uniqSeq) + "-" + strings.ReplaceAll(strconv.FormatInt(time.Now().UnixNano()%1e9, 36), "-", "")
}
