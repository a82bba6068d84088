package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/internal/syncbuf"

	"go.uber.org/goleak"

	"github.com/busway/busway/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// result is one finished run of the tool.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return "exit " + strconv.Itoa(r.code) + "\n--- stdout:\n" + r.stdout + "\n--- stderr:\n" + r.stderr
}

// cli runs the tool in-process with args and returns its output and
// exit code. open nil means busway.Open.
func cli(t *testing.T, open openFunc, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var out, errb syncbuf.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errb, open)
	return result{out.String(), errb.String(), code}
}

// running is a tool run in the background (tail).
type running struct {
	out, err *syncbuf.Buffer
	cancel   context.CancelFunc
	done     chan int
}

func start(t *testing.T, open openFunc, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{out: &syncbuf.Buffer{}, err: &syncbuf.Buffer{}, cancel: cancel, done: make(chan int, 1)}
	go func() { r.done <- run(ctx, args, strings.NewReader(""), r.out, r.err, open) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(time.Minute):
			t.Error("the command did not stop within a minute of its context ending")
		}
	})
	return r
}

// wait returns the exit code once the command ended.
func (r *running) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case code := <-r.done:
		r.done <- code
		return code
	case <-time.After(d):
		t.Fatalf("the command did not end within %v\n--- stdout:\n%s\n--- stderr:\n%s", d, r.out, r.err)
		return -1
	}
}

// waitFor polls cond until it holds or d passed.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shared returns an openFunc that hands out tr for every URL, with a
// Close that does not close it: in-process tests of chanbus, where each
// command must see the same transport.
func shared(tr transport.Transport) openFunc {
	return func(context.Context, string) (transport.Transport, error) { return noClose{tr}, nil }
}

type noClose struct{ transport.Transport }

func (noClose) Close() error { return nil }

func strconvFormat(n int64) string { return strconv.FormatInt(n, 36) }
