// Package crashtest is the helper-process crash harness of busway's
// reliability suite: a test re-executes its own binary as a child (a
// consumer, a relay) and kills it with SIGKILL at random points mid-stream,
// a fresh child taking over each time, while the harness records what was
// handled and prints the figures the README's Guarantees quote: messages
// handled, duplicates per kill against the documented bound, per-key order
// across the crashes and the time to resume after each kill.
//
// A test uses it in two halves of one test function:
//
//	func TestCrash(t *testing.T) {
//		if spec, ok := crashtest.ChildSpec(); ok {
//			runChild(spec) // consume, calling crashtest.Emit(os.Stdout, m) per handled message; never returns
//		}
//		run := crashtest.Run{N: 20000, Keys: 100, Kills: 3, Child: func(k int) *exec.Cmd { return crashtest.Command(t, spec) }}
//		rep := run.Do(t)
//		rep.Log(t)
//	}
//
// Messages are crashtest.Message(i, keys): ID "m-<i>", key "k<i%keys>",
// sequence i/keys within the key, so that order can be checked from the
// message alone (Parse).
package crashtest

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/transport"
)

// EnvChild carries the child's spec: when set, the test binary is a child.
const EnvChild = "BUSWAY_CRASH_CHILD"

// HeaderSeq carries a message's sequence number within its key.
const HeaderSeq = "crash-seq"

// ChildSpec returns the spec the parent gave this process, and whether it
// is a child.
func ChildSpec() (string, bool) {
	s := os.Getenv(EnvChild)
	return s, s != ""
}

// Command returns the command that runs the current test (t.Name(), which
// must be a top-level test) in a child process with spec.
func Command(t *testing.T, spec string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), EnvChild+"="+spec)
	cmd.Stderr = os.Stderr
	return cmd
}

// Message returns message i of a run over keys keys.
func Message(i, keys int) *transport.Message {
	seq := strconv.Itoa(i / keys)
	return &transport.Message{ID: fmt.Sprintf("m-%06d", i), Key: fmt.Sprintf("k%03d", i%keys),
		Header: map[string]string{HeaderSeq: seq}, Body: []byte(seq)}
}

// Parse returns the key and sequence of a message made by Message.
func Parse(m *transport.Message) (key string, seq int, ok bool) {
	seq, err := strconv.Atoi(m.Header[HeaderSeq])
	return m.Key, seq, err == nil
}

var emitMu sync.Mutex

// Emit writes the line the parent reads for a handled message to w (the
// child's stdout); safe for concurrent handlers.
func Emit(w io.Writer, m *transport.Message) error {
	key, seq, ok := Parse(m)
	if !ok {
		return fmt.Errorf("crashtest: message %q has no %s header", m.ID, HeaderSeq)
	}
	emitMu.Lock()
	defer emitMu.Unlock()
	_, err := fmt.Fprintf(w, "handled %s %s %d\n", m.ID, key, seq)
	return err
}

// Run describes one crash run.
type Run struct {
	N, Keys int // messages, keys
	Kills   int // SIGKILLs, each at a random point of the stream
	// Child returns the command of child k (0..Kills), started after the
	// previous one was killed.
	Child func(k int) *exec.Cmd
	// ChildEmits: the child writes Emit lines (a consumer). Otherwise the
	// parent reports handlings with Recorder.Handled (a relay child, the
	// parent consuming).
	ChildEmits bool
	// Seed of the kill points; 0: from the clock (printed, to repeat a run).
	Seed uint64
	// Timeout bounds each child's stretch. Default 3 minutes.
	Timeout time.Duration
	// Settled, when set, must also hold before the last child is stopped
	// (a relay has deleted what it published).
	Settled func() bool

	rec *Recorder
}

// Report is what a run measured.
type Report struct {
	N, Keys, Kills int
	Seed           uint64
	Distinct       int             // messages handled at least once
	Handlings      int             // handler calls (or deliveries) in all
	KilledAt       []int           // distinct messages handled when each kill came
	Dups           []int           // by kill: messages handled again after it that were handled before it
	Resume         []time.Duration // by kill: from the kill to the next handling of any message
	Progress       []time.Duration // by kill: from the kill to the next handling of a message not handled before
	// Regressions counts handlings, within one child's life, of a key's
	// message at or below a sequence that child already handled for the
	// key: per-key order broken inside one consumer.
	Regressions int
	// Overtakes counts first handlings of a key's message while an earlier
	// message of the key had not been handled yet: a later message
	// overtook an earlier one across the whole run, crashes included.
	Overtakes int
	// Late counts first handlings of a message after a later message of
	// its key had been handled: the messages whose order a crash cost.
	Late    int
	Elapsed time.Duration
}

// Recorder records handlings; Do makes one per run.
type Recorder struct {
	mu       sync.Mutex
	epoch    int
	last     map[string]int // ID -> epoch of its latest handling (present: handled before)
	lastSeq  map[string]int // key -> highest sequence handled in the current epoch
	firstSeq map[string]int // key -> number of its first messages handled in order so far (0..)
	seen     map[string]map[int]bool
	maxSeq   map[string]int // key -> highest sequence handled so far, +1
	killedAt time.Time
	resumed  bool
	progress bool
	rep      *Report
}

// Handled records one handling of message id (key, seq).
func (r *Recorder) Handled(id, key string, seq int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := r.rep
	rep.Handlings++
	k := len(rep.Resume) - 1 // the last kill
	if k >= 0 && !r.resumed {
		r.resumed = true
		rep.Resume[k] = time.Since(r.killedAt)
	}
	if last, ok := r.lastSeq[key]; ok && seq <= last {
		rep.Regressions++
	}
	if last, ok := r.lastSeq[key]; !ok || seq > last {
		r.lastSeq[key] = seq
	}
	if e, ok := r.last[id]; ok {
		// A handling again in a later epoch is owed to the kill that ended
		// the epoch of its latest handling: that member handled it and died
		// before its ack counted. Not to the latest kill: the message comes
		// back after AckWait (or a session timeout), which may be after
		// further kills.
		if e < r.epoch && e < len(rep.Dups) {
			rep.Dups[e]++
		}
		r.last[id] = r.epoch
		return
	}
	r.last[id] = r.epoch
	rep.Distinct++
	if k >= 0 && !r.progress {
		r.progress = true
		rep.Progress[k] = time.Since(r.killedAt)
	}
	s := r.seen[key]
	if s == nil {
		s = make(map[int]bool)
		r.seen[key] = s
	}
	s[seq] = true
	if seq+1 < r.maxSeq[key] {
		rep.Late++
	}
	r.maxSeq[key] = max(r.maxSeq[key], seq+1)
	if seq > r.firstSeq[key] {
		rep.Overtakes++ // an earlier one of the key is still missing
	}
	for s[r.firstSeq[key]] {
		r.firstSeq[key]++
	}
}

func (r *Recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rep.Distinct
}

// Recorder returns the recorder of the run in progress, for a parent that
// consumes (ChildEmits false). Valid after Start.
func (run *Run) Recorder() *Recorder { return run.rec }

// Start prepares the recorder; Do calls it if the test did not (a parent
// consumer must be subscribed, with run.Recorder(), before Do).
func (run *Run) Start() *Recorder {
	if run.rec == nil {
		rep := &Report{N: run.N, Keys: run.Keys, Kills: run.Kills, Seed: run.Seed}
		run.rec = &Recorder{last: make(map[string]int), lastSeq: make(map[string]int), firstSeq: make(map[string]int),
			seen: make(map[string]map[int]bool), maxSeq: make(map[string]int), rep: rep}
	}
	return run.rec
}

// Do runs the children, killing all but the last at random points, and
// returns what it measured once every message was handled (or fails the
// test when a child's stretch times out).
func (run *Run) Do(t *testing.T) Report {
	t.Helper()
	rec := run.Start()
	if run.Seed == 0 {
		run.Seed = uint64(time.Now().UnixNano())
	}
	rec.rep.Seed = run.Seed
	rng := rand.New(rand.NewPCG(run.Seed, 13))
	timeout := run.Timeout
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	start := time.Now()
	for k := 0; k <= run.Kills; k++ {
		target := run.N
		if k < run.Kills {
			// Somewhere in the k-th of Kills+1 stretches of the stream.
			lo, hi := k*run.N/(run.Kills+1), (k+1)*run.N/(run.Kills+1)
			target = lo + (hi-lo)/4 + rng.IntN(max(1, (hi-lo)/2))
		}
		cmd := run.Child(k)
		var read chan struct{}
		if run.ChildEmits {
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			read = make(chan struct{})
			go func() {
				defer close(read)
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					f := strings.Fields(sc.Text())
					if len(f) != 4 || f[0] != "handled" {
						continue
					}
					seq, err := strconv.Atoi(f[3])
					if err != nil {
						continue
					}
					rec.Handled(f[1], f[2], seq)
				}
			}()
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(timeout)
		for rec.distinct() < target && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		reached := rec.distinct()
		if k == run.Kills && run.Settled != nil {
			for !run.Settled() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if k < run.Kills || reached < target {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL: no drain, no commit, no goodbye
				t.Fatal(err)
			}
		}
		if k == run.Kills && reached >= target {
			// The last child: it has done the work; stop it the same way.
			_ = cmd.Process.Kill()
		}
		if read != nil {
			<-read
		}
		_ = cmd.Wait()
		rec.mu.Lock()
		if k < run.Kills {
			rec.rep.KilledAt = append(rec.rep.KilledAt, rec.rep.Distinct)
			rec.rep.Dups = append(rec.rep.Dups, 0)
			rec.rep.Resume = append(rec.rep.Resume, 0)
			rec.rep.Progress = append(rec.rep.Progress, 0)
			rec.killedAt, rec.resumed, rec.progress = time.Now(), false, false
			rec.epoch++
			clear(rec.lastSeq)
		}
		rec.mu.Unlock()
		if reached < target {
			t.Fatalf("child %d: %d of %d messages handled within %v (target %d)", k, reached, run.N, timeout, target)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.rep.Elapsed = time.Since(start)
	return *rec.rep
}

// Log prints the report's figures to the test log, with the documented
// duplicates bound per kill.
func (rep Report) Log(t *testing.T, bound int, boundText string) {
	t.Helper()
	t.Logf("crash run: %d messages over %d keys, %d SIGKILLs (seed %d), %v", rep.N, rep.Keys, rep.Kills, rep.Seed, rep.Elapsed.Round(time.Millisecond))
	t.Logf("handled: %d of %d messages at least once, %d handlings (%d duplicates)", rep.Distinct, rep.N, rep.Handlings, rep.Handlings-rep.Distinct)
	for k := range rep.Dups {
		t.Logf("kill %d at %d messages: %d handled again (bound %d: %s); delivery resumed after %v, new messages after %v",
			k+1, rep.KilledAt[k], rep.Dups[k], bound, boundText, rep.Resume[k].Round(time.Millisecond), rep.Progress[k].Round(time.Millisecond))
	}
	t.Logf("order: %d messages first handled after a later message of their key (late); %d first handlings while an earlier message of the key was still missing; %d in-consumer regressions of a key",
		rep.Late, rep.Overtakes, rep.Regressions)
}

// Check fails t when a message was lost or a kill redelivered more than
// bound.
func (rep Report) Check(t *testing.T, bound int) {
	t.Helper()
	if rep.Distinct != rep.N {
		t.Errorf("%d of %d messages handled: %d lost", rep.Distinct, rep.N, rep.N-rep.Distinct)
	}
	for k, d := range rep.Dups {
		if d > bound {
			t.Errorf("kill %d: %d messages handled again, more than the documented bound %d", k+1, d, bound)
		}
	}
}
