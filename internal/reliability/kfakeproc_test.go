package reliability

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// kfakeChildEnv, when set, makes this test binary a kfake cluster process
// (TestKfakeProcess) that writes its brokers' addresses to the file the
// variable names and serves until it is killed.
const kfakeChildEnv = "BUSWAY_KFAKE_CHILD_ADDRS"

// TestKfakeProcess is the child side of kfakeProcess; it skips in a normal
// run.
func TestKfakeProcess(t *testing.T) {
	file := os.Getenv(kfakeChildEnv)
	if file == "" {
		t.Skip("the child process of kfakeProcess")
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(8), kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := os.WriteFile(file+".tmp", []byte(strings.Join(c.ListenAddrs(), ",")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file+".tmp", file); err != nil {
		t.Fatal(err)
	}
	select {} // until the parent kills this process
}

// kfakeProcess starts a kfake cluster in a child process (this test binary
// re-executed), so that the broker's memory is not the test's, and returns
// its brokers; the child is killed when the test ends.
func kfakeProcess(t *testing.T) []string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "addrs")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKfakeProcess$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), kfakeChildEnv+"="+file)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(file)
		if err == nil {
			return strings.Split(string(b), ",")
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kfake child wrote no addresses within 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
