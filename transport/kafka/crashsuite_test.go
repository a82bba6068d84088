package kafka

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/internal/crashtest"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// TestCrashSuite is the reliability suite's crash test on Kafka (kfake in
// this process): 20,000 messages over 100 keys, consumer processes killed
// with SIGKILL three times at random points, a fresh one each time. Every
// message is handled at least once; each kill makes the group handle again
// at most partitions x (MaxInFlight + CommitEvery) messages; per-key order
// holds within each consumer and no message is first handled before an
// earlier one of its key, crashes included; the log has the figures.
func TestCrashSuite(t *testing.T) {
	if spec, ok := crashtest.ChildSpec(); ok {
		crashSuiteChild(spec)
		return
	}
	if testing.Short() {
		t.Skip("starts consumer processes")
	}
	c := newCluster(t)
	tr := open(t, crashConfig(c.ListenAddrs()))
	topic, group := transporttest.UniqueTopic(t), transporttest.UniqueGroup(t)
	const n, keys, kills = 20000, 100, 3
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for i := 0; i < n; i += 500 {
		batch := make([]*transport.Message, 0, 500)
		for j := i; j < min(n, i+500); j++ {
			batch = append(batch, crashtest.Message(j, keys))
		}
		if err := tr.Publish(ctx, topic, batch...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	ids, err := tr.partitions(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	bound := len(ids) * (crashMaxInFlight + crashCommitEvery)
	spec := strings.Join(c.ListenAddrs(), ",") + "|" + topic + "|" + group
	run := crashtest.Run{N: n, Keys: keys, Kills: kills, ChildEmits: true,
		Child: func(int) *exec.Cmd { return crashtest.Command(t, spec) }}
	rep := run.Do(t)
	rep.Log(t, bound, fmt.Sprintf("%d partitions x (MaxInFlight %d + CommitEvery %d)", len(ids), crashMaxInFlight, crashCommitEvery))
	rep.Check(t, bound)
	if rep.Regressions != 0 || rep.Overtakes != 0 || rep.Late != 0 {
		t.Errorf("per-key order broken: %d regressions within a consumer, %d overtakes, %d late", rep.Regressions, rep.Overtakes, rep.Late)
	}
}

// crashSuiteChild consumes spec's "brokers|topic|group" with a fast
// handler that emits each message, until it is killed.
func crashSuiteChild(spec string) {
	parts := strings.Split(spec, "|")
	tr, err := New(context.Background(), crashConfig(strings.Split(parts[0], ",")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: New:", err)
		os.Exit(3)
	}
	_, err = tr.Subscribe(context.Background(), parts[1], func(_ context.Context, m *transport.Message) error {
		return crashtest.Emit(os.Stdout, m)
	}, transport.SubscribeOptions{Group: parts[2], Concurrency: 8, StartFrom: transport.StartEarliest,
		Specific: []transport.SpecificOption{MaxInFlight(crashMaxInFlight)}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: Subscribe:", err)
		os.Exit(3)
	}
	time.Sleep(10 * time.Minute) // the parent kills it long before
	os.Exit(4)
}
