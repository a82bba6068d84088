package fdcheck

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestDescribeSocket: a leaked TCP connection is named by its addresses.
func TestDescribeSocket(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	target, err := os.Readlink("/proc/self/fd/" + strconv.FormatUint(uint64(f.Fd()), 10))
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	got := describeSocket(target)
	want := c.LocalAddr().String() + " -> " + l.Addr().String()
	if !strings.Contains(got, want) {
		t.Fatalf("describeSocket(%q) = %q, want it to name %s", target, got, want)
	}
	if describeSocket("/dev/null") != "" || describeSocket("socket:[4294967295]") != "" {
		t.Fatal("described what is not a known TCP socket")
	}
}

func TestHexAddr(t *testing.T) {
	for in, want := range map[string]string{"0100007F:10CE": "127.0.0.1:4302", "0100007F:zz": "0100007F:zz", "00000000000000000000000001000000:1F90": "00000000000000000000000001000000:1F90"} {
		if got := hexAddr(in); got != want {
			t.Errorf("hexAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
