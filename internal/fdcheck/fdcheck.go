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
	"strconv"
	"strings"
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
				extra = append(extra, fd+" -> "+target+describeSocket(target))
			}
		}
		if len(extra) == 0 || time.Now().After(deadline) {
			slices.Sort(extra)
			return extra
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// describeSocket names the addresses of a leaked socket ("socket:[inode]")
// from /proc/self/net, so that a failure says which connection it was:
// " (tcp 127.0.0.1:41234 -> 127.0.0.1:4222, state 01)"; "" when it is not
// a TCP socket or cannot be found.
func describeSocket(target string) string {
	inode, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return ""
	}
	inode = strings.TrimSuffix(inode, "]")
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile("/proc/self/net/" + table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) > 9 && f[9] == inode {
				return fmt.Sprintf(" (%s %s -> %s, state %s)", table, hexAddr(f[1]), hexAddr(f[2]), f[3])
			}
		}
	}
	return ""
}

// hexAddr renders /proc/net/tcp's "0100007F:10CE" as "127.0.0.1:4302"
// (IPv4; other addresses as they are).
func hexAddr(a string) string {
	host, port, ok := strings.Cut(a, ":")
	p, err := strconv.ParseUint(port, 16, 16)
	if !ok || err != nil || len(host) != 8 {
		return a
	}
	ip, err := strconv.ParseUint(host, 16, 32)
	if err != nil {
		return a
	}
	return fmt.Sprintf("%d.%d.%d.%d:%d", ip&0xff, ip>>8&0xff, ip>>16&0xff, ip>>24, p)
}
