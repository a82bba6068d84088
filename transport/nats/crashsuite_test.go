package nats_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/busway/busway/internal/crashtest"
	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
	"github.com/busway/busway/transport/transporttest"
)

// crashSuiteHeld is the MaxHeld of TestCrashSuite's consumers, set (not
// the default, 256) so that the suite holds them to the same bound as
// before the default grew.
const crashSuiteHeld = 64

// TestCrashSuite is the reliability suite's crash test on NATS (embedded
// server in this process): 20,000 messages over 100 keys, consumer
// processes killed with SIGKILL three times at random points, a fresh one
// each time. Every message is handled at least once; each kill makes the
// group handle again at most what the dead member held (MaxHeld); the log
// has the figures, and how much key order the crashes cost (the held
// messages come back after AckWait, behind later messages of their keys).
func TestCrashSuite(t *testing.T) {
	if spec, ok := crashtest.ChildSpec(); ok {
		crashSuiteChild(spec)
		return
	}
	if testing.Short() {
		t.Skip("starts consumer processes")
	}
	srv := startServer(t, &server.Options{})
	defer stop(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))
	stream, prefix := uniqueStream(t)
	tr := open(t, busnats.Config{Servers: []string{url}, Stream: stream, SubjectPrefix: prefix, AckWait: crashAckWait})
	defer tr.Close()
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
	spec := strings.Join([]string{url, stream, prefix, topic, group}, "|")
	run := crashtest.Run{N: n, Keys: keys, Kills: kills, ChildEmits: true,
		Child: func(int) *exec.Cmd { return crashtest.Command(t, spec) }}
	rep := run.Do(t)
	rep.Log(t, crashSuiteHeld, fmt.Sprintf("MaxHeld %d", crashSuiteHeld))
	rep.Check(t, crashSuiteHeld)
	if rep.Late > kills*crashSuiteHeld {
		t.Errorf("%d messages handled after a later one of their key, more than %d kills x MaxHeld %d", rep.Late, kills, crashSuiteHeld)
	}
}

// crashSuiteChild consumes spec's "url|stream|prefix|topic|group" with a
// fast handler that emits each message, until it is killed.
func crashSuiteChild(spec string) {
	p := strings.Split(spec, "|")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	tr, err := busnats.New(ctx, busnats.Config{Servers: []string{p[0]}, Stream: p[1], SubjectPrefix: p[2],
		Provision: busnats.ProvisionBind, AckWait: crashAckWait})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: New:", err)
		os.Exit(3)
	}
	_, err = tr.Subscribe(context.Background(), p[3], func(_ context.Context, m *transport.Message) error {
		return crashtest.Emit(os.Stdout, m)
	}, transport.SubscribeOptions{Group: p[4], Concurrency: 8, StartFrom: transport.StartEarliest,
		Specific: []transport.SpecificOption{busnats.MaxHeld(crashSuiteHeld)}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: Subscribe:", err)
		os.Exit(3)
	}
	time.Sleep(10 * time.Minute) // the parent kills it long before
	os.Exit(4)
}
