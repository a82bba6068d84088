package nats_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
	"github.com/busway/busway/transport/transporttest"
)

// TestWaitingMessagesNotRedelivered: messages that wait inside the
// subscription (behind others of their key) do not age past AckWait into
// redeliveries. AckWait 1s, 30 messages of one key, a 100 ms handler: the
// handler runs exactly 30 times, in publish order.
func TestWaitingMessagesNotRedelivered(t *testing.T) {
	for _, conc := range []int{1, 4} {
		t.Run(fmt.Sprintf("concurrency-%d", conc), func(t *testing.T) {
			onEachServer(t, func(t *testing.T, cfg busnats.Config) {
				tr := open(t, cfg)
				defer tr.Close()
				topic := transporttest.UniqueTopic(t)
				var mu sync.Mutex
				var seen []int
				sub := subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
					time.Sleep(100 * time.Millisecond)
					n, _ := strconv.Atoi(m.ID)
					mu.Lock()
					seen = append(seen, n)
					mu.Unlock()
					return nil
				}, transport.SubscribeOptions{Group: "g", Concurrency: conc, Specific: []transport.SpecificOption{busnats.AckWait(time.Second)}})
				msgs := make([]*transport.Message, 30)
				for i := range msgs {
					msgs[i] = &transport.Message{ID: strconv.Itoa(i), Key: "one-key"}
				}
				if err := tr.Publish(ctxT(t), topic, msgs...); err != nil {
					t.Fatal(err)
				}
				count := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
				waitUntil(t, 30*time.Second, "30 handler calls", func() bool { return count() >= 30 })
				// A redelivery of a message that waited would arrive
				// within about AckWait.
				time.Sleep(1500 * time.Millisecond)
				if err := sub.Close(ctxT(t)); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				defer mu.Unlock()
				ordered := true
				for i, n := range seen {
					if n != i {
						ordered = false
					}
				}
				if len(seen) != 30 || !ordered {
					t.Fatalf("handler called %d times (want 30) in the order %v", len(seen), seen)
				}
			})
		})
	}
}

// Crash test: the parent runs an embedded server and publishes; each child
// is this test binary re-executed as a consumer (crashChildEnv), which the
// parent SIGKILLs mid-stream. A last consumer in the parent finishes.
const crashChildEnv = "BUSWAY_NATS_CRASH_CHILD"

// crashHeld is the MaxHeld of TestConsumerCrash's consumer processes, set
// (not the default, 256) so that the test holds them to the same bound as
// before the default grew.
const crashHeld = 64

// TestCrashChild is the consumer process of TestConsumerCrash; it does
// nothing in a normal run.
func TestCrashChild(t *testing.T) {
	url := os.Getenv(crashChildEnv)
	if url == "" {
		t.Skip("the consumer process of TestConsumerCrash")
	}
	stream, prefix, topic := os.Getenv("BWC_STREAM"), os.Getenv("BWC_PREFIX"), os.Getenv("BWC_TOPIC")
	tr := open(t, busnats.Config{Servers: []string{url}, Stream: stream, SubjectPrefix: prefix, Provision: busnats.ProvisionBind, AckWait: crashAckWait})
	var mu sync.Mutex
	_, err := tr.Subscribe(context.Background(), topic, func(_ context.Context, m *transport.Message) error {
		time.Sleep(time.Millisecond)
		mu.Lock()
		fmt.Printf("handled %s %s\n", m.Key, m.ID)
		mu.Unlock()
		return nil
	}, transport.SubscribeOptions{Group: "g", Concurrency: 4, Specific: []transport.SpecificOption{busnats.MaxHeld(crashHeld)}})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("subscribed")
	select {} // until killed
}

const crashAckWait = 3 * time.Second

// TestConsumerCrash: consumers of one group die by SIGKILL mid-stream,
// three times; every message is handled, what the dead members held comes
// back after AckWait, and the group never stalls. It prints the duplicates
// and how much key order survived.
func TestConsumerCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("kills consumer processes")
	}
	srv := startServer(t, &server.Options{})
	defer stop(srv)
	url := fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv))
	tr := open(t, busnats.Config{Servers: []string{url}, AckWait: crashAckWait, Storage: busnats.StorageMemory})
	defer tr.Close()
	topic := transporttest.UniqueTopic(t)
	// The group's consumer exists before anything is published.
	var mu sync.Mutex
	handled := map[string]int{} // id -> times
	var order []string          // "key id" as handled, parent and children
	record := func(key, id string) {
		mu.Lock()
		handled[id]++
		order = append(order, key+" "+id)
		mu.Unlock()
	}
	pre, err := tr.Subscribe(ctxT(t), topic, func(context.Context, *transport.Message) error { return nil }, transport.SubscribeOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if err := pre.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}

	const total, keys = 3000, 10
	go func() {
		for i := 0; i < total; i += 50 {
			msgs := make([]*transport.Message, 50)
			for j := range msgs {
				n := i + j
				msgs[j] = &transport.Message{ID: fmt.Sprintf("%05d", n), Key: fmt.Sprintf("k%d", n%keys)}
			}
			if err := tr.Publish(context.Background(), topic, msgs...); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	count := func() int { mu.Lock(); defer mu.Unlock(); return len(handled) }
	for kill := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+url, "BWC_STREAM="+tr.Stream(), "BWC_PREFIX="+strings.TrimSuffix(tr.Subject(""), "."), "BWC_TOPIC="+topic)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string)
		go func() {
			defer close(lines)
			buf := make([]byte, 0, 64<<10)
			b := make([]byte, 32<<10)
			for {
				n, err := out.Read(b)
				buf = append(buf, b[:n]...)
				for {
					i := strings.IndexByte(string(buf), '\n')
					if i < 0 {
						break
					}
					lines <- string(buf[:i])
					buf = buf[i+1:]
				}
				if err != nil {
					return
				}
			}
		}()
		before := count()
		childHandled := 0
		deadline := time.After(60 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("consumer %d ended early", kill)
				}
				if f := strings.Fields(l); len(f) == 3 && f[0] == "handled" {
					record(f[1], f[2])
					childHandled++
					if childHandled >= 300 {
						break read
					}
				}
			case <-deadline:
				t.Fatalf("consumer %d handled %d messages in 60s", kill, childHandled)
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for l := range lines { // what it printed before it died
			if f := strings.Fields(l); len(f) == 3 && f[0] == "handled" {
				record(f[1], f[2])
				childHandled++
			}
		}
		_ = cmd.Wait()
		t.Logf("consumer process %d killed after %d messages (%d handled before it)", kill, childHandled, before)
	}

	// What the dead members held is bounded: it cannot fill MaxAckPending
	// and stall the group.
	const bound = 3 * crashHeld // 3 kills, each member holding at most MaxHeld
	st, err := tr.JetStream().Stream(ctxT(t), tr.Stream())
	if err != nil {
		t.Fatal(err)
	}
	for name := range st.ConsumerNames(ctxT(t)).Name() {
		c, _ := st.Consumer(ctxT(t), name)
		info := c.CachedInfo()
		t.Logf("after the kills, consumer %s: %d pending ack (held by the dead members), %d not yet delivered", name, info.NumAckPending, info.NumPending)
		if info.NumAckPending > bound {
			t.Errorf("%d messages pending ack after 3 kills, want at most %d", info.NumAckPending, bound)
		}
	}

	// The survivor: every message is handled.
	var last sync.Mutex
	lastAt := time.Now()
	var maxGap time.Duration
	subscribe(t, tr, topic, func(_ context.Context, m *transport.Message) error {
		time.Sleep(time.Millisecond)
		last.Lock()
		if g := time.Since(lastAt); g > maxGap {
			maxGap = g
		}
		lastAt = time.Now()
		last.Unlock()
		record(m.Key, m.ID)
		return nil
	}, transport.SubscribeOptions{Group: "g", Concurrency: 4})
	deadline := time.Now().Add(60 * time.Second)
	for count() < total {
		if time.Now().After(deadline) {
			for name := range st.ConsumerNames(ctxT(t)).Name() {
				c, _ := st.Consumer(ctxT(t), name)
				info := c.CachedInfo()
				t.Logf("consumer %s: %d pending ack, %d redelivered, %d not yet delivered, ack floor %d", name, info.NumAckPending, info.NumRedelivered, info.NumPending, info.AckFloor.Stream)
			}
			t.Fatalf("%d of %d messages handled after 60s", count(), total)
		}
		time.Sleep(10 * time.Millisecond)
	}

	mu.Lock()
	defer mu.Unlock()
	dups := 0
	for _, n := range handled {
		dups += n - 1
	}
	// Key order: a handled message that comes after a later one of its key.
	lastOf := map[string]string{}
	late := 0
	for _, e := range order {
		f := strings.Fields(e)
		if f[1] < lastOf[f[0]] {
			late++
		} else {
			lastOf[f[0]] = f[1]
		}
	}
	t.Logf("%d messages, 3 consumer processes killed: %d handled twice or more (duplicates), %d handled after a later message of their key; longest pause of the survivor %v",
		total, dups, late, maxGap)
	if dups > bound || late > bound {
		t.Errorf("%d duplicates and %d late messages, want each at most %d (what 3 dead members can hold)", dups, late, bound)
	}
}
