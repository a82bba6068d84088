package crashtest

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRecorder: the recorder's counts of duplicates, regressions,
// overtakes and late messages, on a hand-made history of two consumers.
func TestRecorder(t *testing.T) {
	run := Run{N: 4, Keys: 1}
	r := run.Start()
	// Consumer 0 handles seq 0 and 2 (1 is held and lost with it).
	r.Handled("m0", "k", 0)
	r.Handled("m2", "k", 2) // overtakes: 1 still missing
	// The kill.
	r.mu.Lock()
	r.rep.KilledAt, r.rep.Dups = append(r.rep.KilledAt, 2), append(r.rep.Dups, 0)
	r.rep.Resume, r.rep.Progress = append(r.rep.Resume, 0), append(r.rep.Progress, 0)
	r.epoch++
	clear(r.lastSeq)
	r.mu.Unlock()
	r.Handled("m2", "k", 2) // a duplicate
	r.Handled("m1", "k", 1) // late, and a regression within consumer 1
	r.Handled("m3", "k", 3)
	rep := *r.rep
	if rep.Distinct != 4 || rep.Handlings != 5 || rep.Dups[0] != 1 || rep.Late != 1 || rep.Regressions != 1 || rep.Overtakes != 1 {
		t.Fatalf("report %+v", rep)
	}
}

// TestDuplicatesOwedToTheirKill: a message the first member handled and
// did not get acked comes back after AckWait, which may be after a second
// kill: the duplicate counts against the first kill, whose member held
// it, not the second. One handled again by a member that also died counts
// against each member's kill.
func TestDuplicatesOwedToTheirKill(t *testing.T) {
	run := Run{N: 3, Keys: 3}
	r := run.Start()
	kill := func() {
		r.mu.Lock()
		r.rep.KilledAt, r.rep.Dups = append(r.rep.KilledAt, r.rep.Distinct), append(r.rep.Dups, 0)
		r.rep.Resume, r.rep.Progress = append(r.rep.Resume, 0), append(r.rep.Progress, 0)
		r.epoch++
		clear(r.lastSeq)
		r.mu.Unlock()
	}
	r.Handled("a", "ka", 0) // member 0
	r.Handled("b", "kb", 0)
	kill()
	r.Handled("c", "kc", 0) // member 1
	kill()
	r.Handled("a", "ka", 0) // member 2, after AckWait: member 0's
	r.Handled("c", "kc", 0) // member 1's
	r.Handled("c", "kc", 0) // member 2 again, no kill between: not counted
	kill()
	r.Handled("a", "ka", 0) // member 3: member 2 handled it again and died too
	if got := r.rep.Dups; len(got) != 3 || got[0] != 1 || got[1] != 1 || got[2] != 1 {
		t.Fatalf("Dups = %v, want [1 1 1] (a to kill 1, c to kill 2, a again to kill 3)", got)
	}
}
