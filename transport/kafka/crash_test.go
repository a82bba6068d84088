package kafka

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// crashChildEnv makes the test binary run crashConsumer instead of the
// test: "brokers|topic|group".
const crashChildEnv = "BUSWAY_KAFKA_CRASH_CHILD"

const (
	crashMaxInFlight = 256
	crashCommitEvery = 500
)

func crashConfig(brokers []string) Config {
	cfg := testConfig(brokers)
	cfg.CommitInterval = time.Second // the default: commits on time alone let a fast handler run far ahead
	cfg.CommitEvery = crashCommitEvery
	return cfg
}

// crashConsumer is the child process: it consumes the group with a fast
// handler that writes "handled <id>" to stdout before it returns nil,
// until it is killed.
func crashConsumer(t *testing.T, spec string) {
	parts := strings.Split(spec, "|")
	tr, err := New(context.Background(), crashConfig(strings.Split(parts[0], ",")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: New:", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	_, err = tr.Subscribe(context.Background(), parts[1], func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		defer mu.Unlock()
		_, err := io.WriteString(os.Stdout, "handled "+m.ID+"\n")
		return err
	}, transport.SubscribeOptions{Group: parts[2], Concurrency: 8, StartFrom: transport.StartEarliest,
		Specific: []transport.SpecificOption{MaxInFlight(crashMaxInFlight)}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: Subscribe:", err)
		os.Exit(3)
	}
	time.Sleep(5 * time.Minute) // the parent kills it long before
	os.Exit(4)
}

// TestCrashRedeliveryBound kills consumer processes (SIGKILL, no drain, no
// final commit) mid-stream: every message is handled at least once, and
// each kill makes the group handle again at most MaxInFlight + CommitEvery
// messages per partition.
func TestCrashRedeliveryBound(t *testing.T) {
	if spec := os.Getenv(crashChildEnv); spec != "" {
		crashConsumer(t, spec)
		return
	}
	if testing.Short() {
		t.Skip("starts consumer processes")
	}
	c := newCluster(t)
	cfg := crashConfig(c.ListenAddrs())
	tr := open(t, cfg)
	topic, group := transporttest.UniqueTopic(t), transporttest.UniqueGroup(t)
	const n, kills = 60000, 3
	publishN(t, tr, topic, "c", n, 1000)
	ids, err := tr.partitions(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	bound := len(ids) * (crashMaxInFlight + crashCommitEvery)

	var mu sync.Mutex
	first := make(map[string]int) // ID -> the child that handled it first
	total := 0                    // handlings
	var perChild []int            // handlings by child
	var dupsOf []int              // by child k: its handlings of messages an earlier child handled
	run := func(k int, until func() bool) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashRedeliveryBound$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+strings.Join(c.ListenAddrs(), ",")+"|"+topic+"|"+group)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		perChild, dupsOf = append(perChild, 0), append(dupsOf, 0)
		mu.Unlock()
		read := make(chan struct{})
		go func() {
			defer close(read)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				id, ok := strings.CutPrefix(sc.Text(), "handled ")
				if !ok {
					continue
				}
				mu.Lock()
				total++
				perChild[k]++
				if f, seen := first[id]; !seen {
					first[id] = k
				} else if f < k {
					dupsOf[k]++
				}
				mu.Unlock()
			}
		}()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			mu.Lock()
			done := until()
			mu.Unlock()
			if done || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err := cmd.Process.Kill(); err != nil { // SIGKILL
			t.Fatal(err)
		}
		<-read
		_ = cmd.Wait()
	}
	for k := range kills {
		target := (k + 1) * n / (kills + 1)
		run(k, func() bool { return len(first) >= target })
		mu.Lock()
		t.Logf("child %d killed after %d handlings (%d distinct messages handled so far)", k, perChild[k], len(first))
		mu.Unlock()
	}
	run(kills, func() bool { return len(first) == n })

	mu.Lock()
	defer mu.Unlock()
	if len(first) != n {
		t.Fatalf("%d of %d messages handled", len(first), n)
	}
	for k := 1; k <= kills; k++ {
		t.Logf("kill %d: %d messages handled again by the next consumer (bound: %d partitions x (MaxInFlight %d + CommitEvery %d) = %d)",
			k, dupsOf[k], len(ids), crashMaxInFlight, crashCommitEvery, bound)
		if dupsOf[k] > bound {
			t.Errorf("kill %d: %d messages handled again, more than the documented bound %d", k, dupsOf[k], bound)
		}
	}
	t.Logf("%d messages, %d handlings (%d duplicates)", n, total, total-n)
}
