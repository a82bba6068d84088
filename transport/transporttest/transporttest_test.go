package transporttest

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/busway/busway/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUniqueNames(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		for _, name := range []string{UniqueTopic(t), UniqueGroup(t)} {
			if seen[name] {
				t.Fatalf("name %q returned twice", name)
			}
			seen[name] = true
			if err := transport.ValidateTopic(name); err != nil {
				t.Fatalf("unique name is not a valid topic: %v", err)
			}
			if err := transport.ValidateName("Group", name); err != nil {
				t.Fatalf("unique name is not a valid group: %v", err)
			}
		}
	}
	t.Run("a/very long sub test name with spaces and ünïcode that goes on and on and on and on", func(t *testing.T) {
		name := UniqueTopic(t)
		if err := transport.ValidateTopic(name); err != nil {
			t.Fatal(err)
		}
		if len(name) > 120 {
			t.Errorf("name %q is %d characters long", name, len(name))
		}
		t.Log(name)
	})
}
