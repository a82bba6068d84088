// Package fdcheck is the TestMain of busway's transport tests: goleak's
// check that no goroutine outlives the tests, plus a check that the
// process's open file descriptors (sockets, store files, pipes) are back to
// their count before the tests once every test and cleanup has run, so a
// transport that leaks a connection or a file on Close fails its package.
package fdcheck

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Main runs m, then fails the run (exit code 1) if a goroutine leaked
// (goleak.Find) or file descriptors opened during it are still open after
// a grace period of 10 s (closing is sometimes asynchronous: a server's
// listener goroutine). Use it in place of goleak.VerifyTestMain:
//
//	func TestMain(m *testing.M) { fdcheck.Main(m) }
func Main(m *testing.M, opts ...goleak.Option) {
	before := warmOpen()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: Errors on successful test run: %v\n", err)
			code = 1
		}
	}
	if code == 0 && before != nil {
		if extra := waitClosed(before, 10*time.Second); len(extra) > 0 {
			fmt.Fprintf(os.Stderr, "fdcheck: %d file descriptors opened by the tests are still open after every Close: %v\n", len(extra), extra)
			code = 1
		}
	}
	os.Exit(code)
}

// warmOpen opens what the runtime opens once for good on first use (the
// network poller), then returns the open descriptors; nil where
// /proc/self/fd does not exist.
func warmOpen() map[string]string {
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	fds, err := Open()
	if err != nil {
		return nil
	}
	return fds
}

// Open returns the process's open file descriptors, number -> target.
func Open() (map[string]string, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	fds := make(map[string]string, len(ents))
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the descriptor ReadDir itself used, closed since
		}
		fds[e.Name()] = target
	}
	return fds, nil
}

func waitClosed(before map[string]string, grace time.Duration) []string {
	deadline := time.Now().Add(grace)
	for {
		now, err := Open()
		if err != nil {
			return nil
		}
		var extra []string
		for fd, target := range now {
			if b, ok := before[fd]; !ok || b != target {
				extra = append(extra, fd+" -> "+target)
			}
		}
		if len(extra) == 0 || time.Now().After(deadline) {
			slices.Sort(extra)
			return extra
		}
		time.Sleep(50 * time.Millisecond)
	}
}
