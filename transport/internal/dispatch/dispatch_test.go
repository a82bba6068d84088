package dispatch

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type item struct {
	key string
	seq int
}

// run starts n workers that call fn on each head and finish it; stop ends
// them. It returns a wait function.
func run[T any](d *Dispatcher[T], n int, stop <-chan struct{}, fn func(T)) (wait func()) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for l := d.Next(stop, i); l != nil; {
				fn(l.Head())
				if !d.Done(l) {
					l = d.Next(stop, i)
				}
			}
		})
	}
	return wg.Wait
}

func TestKeyOrderAndParallelKeys(t *testing.T) {
	d := New[item](Config{Turn: 3})
	const keys, per = 20, 200
	var mu sync.Mutex
	last := map[string]int{}
	var running, most atomic.Int32
	perKey := map[string]*atomic.Int32{}
	for k := range keys {
		perKey[fmt.Sprint("k", k)] = new(atomic.Int32)
	}
	var handled atomic.Int32
	wait := run(d, 8, nil, func(it item) {
		if c := perKey[it.key].Add(1); c != 1 {
			t.Errorf("key %s: %d items run at once", it.key, c)
		}
		r := running.Add(1)
		for m := most.Load(); r > m && !most.CompareAndSwap(m, r); m = most.Load() {
		}
		mu.Lock()
		if prev, ok := last[it.key]; ok && it.seq != prev+1 {
			t.Errorf("key %s: item %d ran after %d", it.key, it.seq, prev)
		}
		last[it.key] = it.seq
		mu.Unlock()
		time.Sleep(10 * time.Microsecond) // let other workers overlap
		running.Add(-1)
		perKey[it.key].Add(-1)
		handled.Add(1)
	})
	for s := range per {
		for k := range keys {
			d.Add(fmt.Sprint("k", k), item{fmt.Sprint("k", k), s})
		}
	}
	d.Close()
	wait()
	if got := handled.Load(); got != keys*per {
		t.Fatalf("handled %d items, want %d", got, keys*per)
	}
	if most.Load() < 2 {
		t.Errorf("at most %d items ran at once on 8 workers with 20 keys: keys did not run in parallel", most.Load())
	}
}

// A key whose handler blocks, or whose head is held for a retry, holds up
// only that key.
func TestSlowKeyBlocksOnlyItself(t *testing.T) {
	for _, mode := range []string{"running", "held"} {
		t.Run(mode, func(t *testing.T) {
			d := New[item](Config{})
			release := make(chan struct{})
			var held *Lane[item]
			var heldMu sync.Mutex
			got := make(chan item, 100)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() {
					for l := d.Next(nil, i); l != nil; {
						it := l.Head()
						if it.key == "slow" && it.seq == 0 && l.Attempt == 0 {
							l.Attempt++
							if mode == "held" {
								heldMu.Lock()
								held = l
								heldMu.Unlock()
								d.Hold(l)
								close(release)
								l = d.Next(nil, i)
								continue
							}
							<-release
						}
						got <- it
						if !d.Done(l) {
							l = d.Next(nil, i)
						}
					}
				})
			}
			d.Add("slow", item{"slow", 0})
			d.Add("slow", item{"slow", 1})
			for s := range 10 {
				d.Add("fast", item{"fast", s})
				d.Add("", item{"", s})
			}
			for range 20 {
				select {
				case it := <-got:
					if it.key == "slow" {
						t.Fatalf("%v ran while the slow key's head was %s", it, mode)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("other keys did not run while one key was stuck")
				}
			}
			if mode == "running" {
				close(release)
			} else {
				<-release
				heldMu.Lock()
				d.Ready(held)
				heldMu.Unlock()
			}
			for s := range 2 {
				if it := <-got; it != (item{"slow", s}) {
					t.Fatalf("got %v, want slow item %d", it, s)
				}
			}
			d.Close()
			wg.Wait()
		})
	}
}

func TestTryAddLimits(t *testing.T) {
	d := New[int](Config{KeyLimit: 2, Limit: 3})
	for i := range 2 {
		if ok, _, _ := d.TryAdd("a", i); !ok {
			t.Fatalf("item %d of key a refused under KeyLimit 2", i)
		}
	}
	ok, room, owner := d.TryAdd("a", 2)
	if ok || room == nil || owner != nil {
		t.Fatalf("third item of a: ok %v, room %v, owner %v; want refused, a room channel, no owner", ok, room, owner)
	}
	if ok, _, _ := d.TryAdd("b", 0); !ok {
		t.Fatal("a full key refused another key's item")
	}
	if ok, _, _ := d.TryAdd("", 0); ok {
		t.Fatal("a keyless item was queued past Limit 3")
	}
	if n := d.ReadyLanes(); n != 2 {
		t.Fatalf("%d lanes ready, want 2 (a and b)", n)
	}
	// A worker takes a's lane with both its items (its batch): room comes,
	// and the lane's owner is known.
	l := d.Next(nil, "w1")
	if l.Key() != "a" || l.Head() != 0 {
		t.Fatalf("took %q/%d, want a/0", l.Key(), l.Head())
	}
	select {
	case <-room:
	default:
		t.Fatal("room not signalled when a worker took an item")
	}
	if all, ofA := d.Waiting("a"); all != 1 || ofA != 0 {
		t.Fatalf("waiting %d, of a %d; want 1 (b) and 0 (the worker took both of a's)", all, ofA)
	}
	if n := d.ReadyLanes(); n != 1 {
		t.Fatalf("%d lanes ready after a worker took a's, want 1 (b)", n)
	}
	for _, v := range []int{2, 3} {
		if ok, _, _ := d.TryAdd("a", v); !ok {
			t.Fatalf("item %d refused after room came", v)
		}
	}
	ok, _, owner = d.TryAdd("a", 4)
	if ok || owner != "w1" {
		t.Fatalf("a fifth item of a: ok %v, owner %v; want refused, owned by w1", ok, owner)
	}
	d.Add("a", 5) // Add ignores limits
	if all, ofA := d.Waiting("a"); all != 4 || ofA != 3 {
		t.Fatalf("after Add: waiting %d, of a %d; want 4 and 3", all, ofA)
	}
	// Drain drops all but the held head: b's item, the worker's item 1
	// behind its head, and a's 2, 3 and 5.
	var dropped []int
	if n := d.Drain(func(v int) { dropped = append(dropped, v) }); n != 5 {
		t.Fatalf("Drain dropped %d (%v), want 5", n, dropped)
	}
	slices.Sort(dropped)
	if fmt.Sprint(dropped) != "[0 1 2 3 5]" {
		t.Fatalf("Drain dropped %v, want b's 0 and a's 1, 2, 3, 5", dropped)
	}
	if d.Done(l) {
		t.Fatal("Done kept a drained lane")
	}
	if all, _ := d.Waiting(""); all != 0 {
		t.Fatalf("waiting %d after Drain", all)
	}
}

// TestReleaseMidBatch: a worker that took a lane's items at once and hands
// the lane back after running some (Release, as a stopping worker does)
// gives the rest back in order, before items added meanwhile; a Hold and
// Ready keeps the head and its Attempt.
func TestReleaseMidBatch(t *testing.T) {
	d := New[int](Config{})
	for i := range 4 {
		d.Add("k", i)
	}
	l := d.Next(nil, "w1")
	if l.Head() != 0 || !d.Done(l) || l.Head() != 1 {
		t.Fatalf("head %d after one Done, want 1", l.Head())
	}
	d.Add("k", 4)
	if all, ofK := d.Waiting("k"); all != 1 || ofK != 1 {
		t.Fatalf("waiting %d, of k %d; want 1 and 1 (4; 1-3 are the worker's)", all, ofK)
	}
	d.Release(l)
	if all, _ := d.Waiting("k"); all != 4 {
		t.Fatalf("waiting %d after Release, want 4 (1-4)", all)
	}
	l = d.Next(nil, "w2")
	if l.Head() != 1 {
		t.Fatalf("head %d after Release, want 1", l.Head())
	}
	l.Attempt = 3
	d.Hold(l)
	d.Ready(l)
	l = d.Next(nil, "w3")
	if l.Head() != 1 || l.Attempt != 3 {
		t.Fatalf("after Hold and Ready: head %d, attempt %d; want 1, 3", l.Head(), l.Attempt)
	}
	var got []int
	for {
		got = append(got, l.Head())
		if !d.Done(l) {
			break
		}
		if l.Attempt != 0 {
			t.Fatalf("attempt %d on a new head, want 0", l.Attempt)
		}
	}
	if fmt.Sprint(got) != "[1 2 3 4]" {
		t.Fatalf("ran %v, want [1 2 3 4]", got)
	}
	if all, _ := d.Waiting(""); all != 0 {
		t.Fatalf("waiting %d at the end", all)
	}
}

func TestTurnLetsOtherLanesGo(t *testing.T) {
	d := New[item](Config{Turn: 2})
	for s := range 4 {
		d.Add("a", item{"a", s})
	}
	d.Add("b", item{"b", 0})
	var order []item
	l := d.Next(nil, nil)
	for l != nil {
		order = append(order, l.Head())
		if !d.Done(l) {
			d.Close()
			l = d.Next(nil, nil)
		}
	}
	want := []item{{"a", 0}, {"a", 1}, {"b", 0}, {"a", 2}, {"a", 3}}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("one worker ran %v, want %v (a turn of 2, then b)", order, want)
	}
}

func TestNextReturnsOnStopAndClose(t *testing.T) {
	d := New[int](Config{})
	stop := make(chan struct{})
	got := make(chan *Lane[int])
	go func() { got <- d.Next(stop, nil) }()
	close(stop)
	if l := <-got; l != nil {
		t.Fatal("Next returned a lane after stop")
	}
	go func() { got <- d.Next(nil, nil) }()
	d.Add("", 7)
	if l := <-got; l == nil || l.Head() != 7 {
		t.Fatal("an idle worker was not woken by Add")
	}
	go func() { got <- d.Next(nil, nil) }()
	d.Close()
	if l := <-got; l != nil {
		t.Fatal("Next returned a lane from a closed, empty dispatcher")
	}
	// Release puts a taken lane back.
	d.Add("k", 1)
	l := d.Next(nil, nil)
	d.Release(l)
	if l2 := d.Next(nil, nil); l2 == nil || l2.Head() != 1 {
		t.Fatal("a released lane was not taken again")
	}
}

func BenchmarkAddDone(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		b.Run(fmt.Sprint("keyed=", keyed), func(b *testing.B) {
			d := New[int](Config{Limit: 256})
			var wg sync.WaitGroup
			wg.Go(func() {
				for l := d.Next(nil, nil); l != nil; {
					if !d.Done(l) {
						l = d.Next(nil, nil)
					}
				}
			})
			keys := []string{"a", "b", "c", "d"}
			b.ReportAllocs()
			for i := range b.N {
				k := ""
				if keyed {
					k = keys[i%len(keys)]
				}
				for {
					ok, room, _ := d.TryAdd(k, i)
					if ok {
						break
					}
					<-room
				}
			}
			d.Close()
			wg.Wait()
		})
	}
}

// The holder of a lane reads Head while producers add behind it, which
// grows the lane's buffer: no data race (under -race), and Head is the
// item taken.
func TestHeadWhileAdding(t *testing.T) {
	d := New[int](Config{})
	d.Add("k", 0)
	l := d.Next(nil, nil)
	added := make(chan struct{})
	go func() {
		defer close(added)
		for i := 1; i <= 1000; i++ {
			d.Add("k", i)
		}
	}()
	for range 1000 {
		if h := l.Head(); h != 0 {
			t.Fatalf("Head %d while the lane's first item runs, want 0", h)
		}
	}
	<-added
	for want := 0; ; want++ {
		if h := l.Head(); h != want {
			t.Fatalf("Head %d, want %d", h, want)
		}
		if !d.Done(l) {
			if want != 1000 {
				t.Fatalf("lane let go after item %d", want)
			}
			break
		}
	}
}

// TestKeyRoomOnlyForItsKey: a TryAdd refused for its key's KeyLimit gets a
// room channel that a take of another key leaves alone and a take of its
// key closes; one refused for Limit gets one that any take closes.
func TestKeyRoomOnlyForItsKey(t *testing.T) {
	d := New[int](Config{KeyLimit: 1, Limit: 3})
	d.Add("b", 0)
	d.Add("a", 0)
	ok, roomA, _ := d.TryAdd("a", 1)
	if ok {
		t.Fatal("second item of a queued past KeyLimit 1")
	}
	lb := d.Next(nil, "w")
	if lb.Key() != "b" {
		t.Fatalf("took %q, want b first", lb.Key())
	}
	select {
	case <-roomA:
		t.Fatal("a take of key b signalled room for key a")
	default:
	}
	d.Add("c", 0)
	d.Add("d", 0)
	ok, roomAll, _ := d.TryAdd("e", 0) // a, c, d wait: Limit 3
	if ok {
		t.Fatal("queued past Limit 3")
	}
	la := d.Next(nil, "w")
	if la.Key() != "a" {
		t.Fatalf("took %q, want a", la.Key())
	}
	for name, room := range map[string]<-chan struct{}{"key a's": roomA, "the total's": roomAll} {
		select {
		case <-room:
		default:
			t.Fatalf("%s room not signalled when a's item was taken", name)
		}
	}
}

// parkedAndKeys counts d's parked lanes and keyed lanes in its maps.
func parkedAndKeys[T any](d *Dispatcher[T]) (parked, keys int) {
	for i := range d.stripes {
		st := &d.stripes[i]
		st.mu.Lock()
		parked += st.parked
		keys += st.keys.n
		st.mu.Unlock()
	}
	return parked, keys
}

// An emptied lane stays parked under its key (up to maxParked keys a
// stripe), and the key's next item runs from it, in order; Drain forgets
// parked lanes.
func TestParkedLanes(t *testing.T) {
	d := New[int](Config{})
	runAll := func() []string {
		var got []string
		for d.ReadyLanes() > 0 {
			l := d.Next(nil, nil)
			for {
				got = append(got, fmt.Sprint(l.Key(), "/", l.Head()))
				if !d.Done(l) {
					break
				}
			}
		}
		return got
	}
	const n = stripes*maxParked + 50
	perStripe := map[*stripe[int]]int{}
	for k := range n {
		key := fmt.Sprint("k", k)
		st, _ := d.stripeOf(key)
		perStripe[st]++
		d.Add(key, 0)
	}
	runAll()
	want := 0
	for _, c := range perStripe {
		want += min(c, maxParked)
	}
	if parked, keys := parkedAndKeys(d); parked != want || keys != want {
		t.Fatalf("after %d keys ran empty: %d parked, %d keys kept; want %d of each (at most %d a stripe)", n, parked, keys, want, maxParked)
	}
	d.Add("k1", 1)
	d.Add("k1", 2)
	d.Add("new", 1)
	if all, ofKey := d.Waiting("k1"); all != 3 || ofKey != 2 {
		t.Fatalf("waiting %d, of k1 %d; want 3 and 2", all, ofKey)
	}
	if got := fmt.Sprint(runAll()); got != "[k1/1 k1/2 new/1]" {
		t.Fatalf("ran %s, want k1's items from its parked lane, in order, then new", got)
	}
	if n := d.Drain(func(int) {}); n != 0 {
		t.Fatalf("Drain dropped %d items of parked lanes", n)
	}
	if parked, keys := parkedAndKeys(d); parked != 0 || keys != 0 {
		t.Fatalf("after Drain: %d parked, %d keys", parked, keys)
	}
}

// A TryAdd refused for Limit is told to try again by the next take, also
// when the take comes between the refusal and the wait.
func TestTotalRoom(t *testing.T) {
	d := New[int](Config{Limit: 1})
	if ok, _, _ := d.TryAdd("a", 1); !ok {
		t.Fatal("first item refused")
	}
	ok, room, _ := d.TryAdd("b", 1)
	if ok {
		t.Fatal("second item queued past Limit 1")
	}
	l := d.Next(nil, nil)
	select {
	case <-room:
	case <-time.After(10 * time.Second):
		t.Fatal("room not signalled by a take")
	}
	if ok, _, _ := d.TryAdd("b", 1); !ok {
		t.Fatal("refused after room came")
	}
	_ = d.Done(l)
}

// TestOrderWithReleaseAndHold: producers and workers at once, the workers
// now and then handing a lane back mid-batch (Release) or holding its head
// for a retry (Hold, then Ready from another goroutine, run again): every
// item of every key runs to the end once, in the order it was added, and
// nothing is left waiting.
func TestOrderWithReleaseAndHold(t *testing.T) {
	d := New[item](Config{Turn: 8})
	const keys, per, producers = 12, 300, 3
	var mu sync.Mutex
	next := map[string]int{} // the key's next seq to finish
	var finished atomic.Int32
	var retries sync.WaitGroup
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			n := 0
			for l := d.Next(nil, w); l != nil; {
				n++
				it := l.Head()
				switch {
				case n%7 == 0:
					d.Release(l) // handed back unrun: runs again later
					l = d.Next(nil, w)
					continue
				case n%11 == 0 && l.Attempt == 0:
					l.Attempt++
					d.Hold(l)
					held := l
					retries.Go(func() { d.Ready(held) })
					l = d.Next(nil, w)
					continue
				}
				mu.Lock()
				if it.seq != next[it.key] {
					t.Errorf("key %s: item %d finished, want %d", it.key, it.seq, next[it.key])
				}
				next[it.key] = it.seq + 1
				mu.Unlock()
				finished.Add(1)
				if !d.Done(l) {
					l = d.Next(nil, w)
				}
			}
		})
	}
	var pg sync.WaitGroup
	for p := range producers {
		pg.Go(func() {
			for s := range per {
				for k := p; k < keys; k += producers { // each key has one producer: its order is defined
					key := fmt.Sprint("k", k)
					d.Add(key, item{key, s})
				}
			}
		})
	}
	pg.Wait()
	for finished.Load() < keys*per {
		if t.Failed() {
			break
		}
		time.Sleep(time.Millisecond)
	}
	d.Close()
	wg.Wait()
	retries.Wait()
	if got := finished.Load(); got != keys*per {
		t.Fatalf("finished %d items, want %d", got, keys*per)
	}
	if all, _ := d.Waiting(""); all != 0 {
		t.Fatalf("%d items still waiting", all)
	}
}

// TestNothingQueuedAfterDrain: once drained, a dispatcher takes no item:
// Add and TryAdd report it, keyed and keyless, and nothing waits.
func TestNothingQueuedAfterDrain(t *testing.T) {
	d := New[int](Config{KeyLimit: 1, Limit: 1})
	d.Add("k", 1)
	if n := d.Drain(func(int) {}); n != 1 {
		t.Fatalf("Drain dropped %d, want 1", n)
	}
	for _, key := range []string{"k", "other", ""} {
		if d.Add(key, 2) {
			t.Errorf("Add(%q) queued after Drain", key)
		}
		if ok, room, _ := d.TryAdd(key, 3); ok || room != nil {
			t.Errorf("TryAdd(%q) after Drain = %v, room %v; want false, nil", key, ok, room)
		}
	}
	if all, _ := d.Waiting(""); all != 0 || d.ReadyLanes() != 0 {
		t.Fatalf("after Drain: %d waiting, %d lanes ready", all, d.ReadyLanes())
	}
}

// BenchmarkBatches is the pattern of Kafka's fetch loop: a producer adds
// items in runs of 64 (a fetch response's, as MaxInFlight lets it) over
// 1000 keys in turn, bounded by an in-flight limit of 1024, and 1 or 16
// workers finish them; one at a time (Add) or a run at once (AddAll).
func BenchmarkBatches(b *testing.B) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("key-", i)
	}
	for _, workers := range []int{1, 16} {
		for _, batched := range []bool{false, true} {
			b.Run(fmt.Sprintf("workers=%d/batched=%v", workers, batched), func(b *testing.B) {
				type job struct{ key string }
				jobs := make([]job, 4096)
				for i := range jobs {
					jobs[i].key = keys[i%len(keys)]
				}
				d := New[*job](Config{})
				const limit = 1024
				var inflight atomic.Int64
				room := make(chan struct{}, 1)
				wait := run(d, workers, nil, func(*job) {
					if inflight.Add(-1) == limit/2 {
						select {
						case room <- struct{}{}:
						default:
						}
					}
				})
				var items [64]*job
				b.ResetTimer()
				cpu := processCPU()
				for i := 0; i < b.N; {
					for inflight.Load() > limit-64 {
						<-room
					}
					n := min(64, b.N-i)
					for k := range n {
						items[k] = &jobs[(i+k)%len(jobs)]
					}
					inflight.Add(int64(n))
					if batched {
						d.AddAll(items[:n], func(j *job) string { return j.key })
					} else {
						for _, j := range items[:n] {
							d.Add(j.key, j)
						}
					}
					i += n
				}
				d.Close()
				wait()
				b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// processCPU is the process's CPU time so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func itemKey(it item) string { return it.key }

// TestAddAllOrder: producers at once, one adding its keys' items in
// batches (with keyless items among them, and batches longer than
// maxBatch), one alternating batches and single Adds of its keys, one
// adding single items, and workers handing lanes back mid-batch and
// holding heads for retries: every item runs to the end once, each key's
// in the order it was added, and nothing is left waiting.
func TestAddAllOrder(t *testing.T) {
	t.Run("owners", func(t *testing.T) { testAddAllOrder(t, Config{Turn: 8}, 4, true) })
	// Workers that pass no owner take the batches handed over by AddAll
	// without the stripe's lock; a solo worker takes several ahead.
	t.Run("no owners", func(t *testing.T) { testAddAllOrder(t, Config{Turn: 8}, 4, false) })
	t.Run("solo", func(t *testing.T) { testAddAllOrder(t, Config{Turn: 8, Workers: 1}, 1, false) })
}

func testAddAllOrder(t *testing.T, cfg Config, workers int, owners bool) {
	d := New[item](cfg)
	const keys, per = 12, 300 // keys k0..k11; key k belongs to producer k%3
	var mu sync.Mutex
	next := map[string]int{} // the key's next seq to finish
	keylessRan := map[int]int{}
	var finished atomic.Int32
	var retries sync.WaitGroup
	var wg sync.WaitGroup
	for i := range workers {
		var w any
		if owners {
			w = i
		}
		wg.Go(func() {
			n := 0
			for l := d.Next(nil, w); l != nil; {
				n++
				it := l.Head()
				switch {
				case n%7 == 0:
					d.Release(l)
					l = d.Next(nil, w)
					continue
				case n%11 == 0 && l.Attempt == 0:
					l.Attempt++
					d.Hold(l)
					held := l
					retries.Go(func() { d.Ready(held) })
					l = d.Next(nil, w)
					continue
				}
				mu.Lock()
				if it.key == "" {
					keylessRan[it.seq]++
				} else {
					if it.seq != next[it.key] {
						t.Errorf("key %s: item %d finished, want %d", it.key, it.seq, next[it.key])
					}
					next[it.key] = it.seq + 1
				}
				mu.Unlock()
				finished.Add(1)
				if !d.Done(l) {
					l = d.Next(nil, w)
				}
			}
		})
	}
	keyless := 0
	var pg sync.WaitGroup
	for p := range 3 {
		pg.Go(func() {
			var batch []item
			flush := func() {
				if !d.AddAll(batch, itemKey) {
					t.Error("AddAll refused a batch before any Drain")
				}
				batch = batch[:0]
			}
			for s := range per {
				for k := p; k < keys; k += 3 {
					key := fmt.Sprint("k", k)
					it := item{key, s}
					switch {
					case p == 0:
						batch = append(batch, it)
						if s%5 == 0 && k == 0 {
							batch = append(batch, item{"", s})
						}
					case p == 1 && s%3 == 0:
						flush()
						d.Add(key, it)
					case p == 1:
						batch = append(batch, it)
					default:
						d.Add(key, it)
					}
				}
				// Batches of every length: past maxBatch, and single ones.
				if len(batch) > 0 && (p == 1 || s%(2*maxBatch/3) == 0) {
					flush()
				}
			}
			if len(batch) > 0 {
				flush()
			}
		})
	}
	for s := range per {
		if s%5 == 0 {
			keyless++
		}
	}
	pg.Wait()
	want := int32(keys*per + keyless)
	for finished.Load() < want {
		if t.Failed() {
			break
		}
		time.Sleep(time.Millisecond)
	}
	d.Close()
	wg.Wait()
	retries.Wait()
	if got := finished.Load(); got != want {
		t.Fatalf("finished %d items, want %d", got, want)
	}
	for k := range keys {
		if key := fmt.Sprint("k", k); next[key] != per {
			t.Errorf("key %s finished %d items, want %d", key, next[key], per)
		}
	}
	if len(keylessRan) != keyless {
		t.Errorf("%d keyless items ran, want %d", len(keylessRan), keyless)
	}
	for seq, n := range keylessRan {
		if n != 1 {
			t.Errorf("keyless item %d ran %d times", seq, n)
		}
	}
	if all, _ := d.Waiting(""); all != 0 || d.ReadyLanes() != 0 {
		t.Fatalf("%d items still waiting, %d lanes ready", all, d.ReadyLanes())
	}
}

// TestAddAllAccounting: a batch counts its items as waiting (in all and of
// their keys, so that TryAdd's KeyLimit and Limit see them), readies each
// lane once, in the order of the items that readied it (a new key's, a
// parked key's, a keyless item's), and queues behind a held lane without
// readying it.
func TestAddAllAccounting(t *testing.T) {
	d := New[item](Config{KeyLimit: 2, Limit: 9})
	d.Add("p", item{"p", 0})
	l := d.Next(nil, "w")
	if d.Done(l) {
		t.Fatal("kept a lane with no item left")
	}
	// p's lane is parked now; h's is held by a worker.
	d.Add("h", item{"h", 0})
	lh := d.Next(nil, "w")
	batch := []item{{"b", 0}, {"", 0}, {"a", 0}, {"h", 1}, {"a", 1}, {"p", 1}, {"b", 1}, {"a", 2}}
	if !d.AddAll(batch, itemKey) {
		t.Fatal("AddAll refused")
	}
	if n := d.ReadyLanes(); n != 4 {
		t.Fatalf("%d lanes ready, want 4 (b, the keyless item, a, p; not h, held)", n)
	}
	for key, want := range map[string]int{"a": 3, "b": 2, "h": 1, "p": 1} {
		if all, ofKey := d.Waiting(key); all != 8 || ofKey != want {
			t.Errorf("waiting %d, of %s %d; want 8 and %d", all, key, ofKey, want)
		}
	}
	if ok, _, owner := d.TryAdd("h", item{"h", 2}); !ok || owner != nil {
		t.Errorf("TryAdd of h, with 1 waiting of KeyLimit 2: ok %v, owner %v", ok, owner)
	}
	if ok, room, _ := d.TryAdd("c", item{"c", 0}); ok || room == nil {
		t.Error("TryAdd of a new key queued past Limit 9 after a batch and one TryAdd")
	}
	if ok, _, _ := d.TryAdd("a", item{"a", 3}); ok {
		t.Error("TryAdd of a queued past KeyLimit 2 after a batch of 3 of a")
	}
	var got []string
	for d.ReadyLanes() > 0 {
		l := d.Next(nil, "w2")
		for {
			got = append(got, fmt.Sprint(l.Key(), "/", l.Head().seq))
			if !d.Done(l) {
				break
			}
		}
	}
	if s := fmt.Sprint(got); s != "[b/0 b/1 /0 a/0 a/1 a/2 p/1]" {
		t.Fatalf("ran %s, want b's, the keyless item, a's, p's: lanes in the order their first items were added", s)
	}
	for want := 0; want <= 2; want++ {
		if lh.Head().seq != want {
			t.Fatalf("h's holder has %d, want %d", lh.Head().seq, want)
		}
		if kept := d.Done(lh); kept != (want < 2) {
			t.Fatalf("Done on h/%d kept the lane: %v", want, kept)
		}
	}
	if all, _ := d.Waiting(""); all != 0 {
		t.Fatalf("%d waiting at the end", all)
	}
	if !d.AddAll(nil, itemKey) {
		t.Fatal("an empty AddAll refused")
	}
}

// TestAddAllRacingDrain: batches added while Drain runs either were queued
// before it (Drain drops each item of them) or are refused, and nothing is
// queued after it: no lane is ready and nothing waits once Drain returned,
// whatever AddAll was doing then.
func TestAddAllRacingDrain(t *testing.T) {
	t.Run("between queueing and readying", func(t *testing.T) {
		d := New[item](Config{})
		var dropped []string
		testHookBatchReadying = func() {
			d.Drain(func(it item) { dropped = append(dropped, fmt.Sprint(it.key, "/", it.seq)) })
		}
		defer func() { testHookBatchReadying = nil }()
		if d.AddAll([]item{{"a", 0}, {"", 0}, {"b", 0}, {"a", 1}}, itemKey) {
			t.Error("AddAll reported its batch queued though Drain came before its lanes were ready")
		}
		slices.Sort(dropped)
		if fmt.Sprint(dropped) != "[a/0 a/1 b/0]" {
			t.Errorf("Drain dropped %v, want the keyed items queued before it", dropped)
		}
		if all, _ := d.Waiting(""); all != 0 || d.ReadyLanes() != 0 {
			t.Fatalf("after Drain and AddAll: %d wait, %d lanes ready", all, d.ReadyLanes())
		}
		d.Close()
		if l := d.Next(nil, nil); l != nil {
			t.Fatalf("a worker took %q/%d after Drain", l.Key(), l.Head().seq)
		}
	})
	for round := range 200 {
		d := New[item](Config{})
		var full, partial []item // batches AddAll reported queued; the refused one
		start := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			<-start
			for b := 0; ; b++ {
				batch := make([]item, 0, 90)
				for i := range 90 {
					key := fmt.Sprint("k", i%13)
					if i%9 == 0 {
						key = ""
					}
					batch = append(batch, item{key, b*90 + i})
				}
				if !d.AddAll(batch, itemKey) {
					partial = batch
					return
				}
				full = append(full, batch...)
			}
		}()
		close(start)
		if round%2 == 1 {
			runtime.Gosched()
		}
		var dropped []int
		d.Drain(func(it item) { dropped = append(dropped, it.seq) })
		if all, _ := d.Waiting(""); all != 0 || d.ReadyLanes() != 0 {
			t.Fatalf("round %d: right after Drain %d wait, %d lanes ready", round, all, d.ReadyLanes())
		}
		<-done
		if all, _ := d.Waiting(""); all != 0 || d.ReadyLanes() != 0 {
			t.Fatalf("round %d: once the refused AddAll returned %d wait, %d lanes ready", round, all, d.ReadyLanes())
		}
		d.Close()
		if l := d.Next(nil, nil); l != nil {
			t.Fatalf("round %d: a worker took %q/%d after Drain", round, l.Key(), l.Head().seq)
		}
		slices.Sort(dropped)
		if len(slices.Compact(slices.Clone(dropped))) != len(dropped) {
			t.Fatalf("round %d: Drain dropped an item twice", round)
		}
		for _, it := range full {
			if _, ok := slices.BinarySearch(dropped, it.seq); !ok {
				t.Fatalf("round %d: item %d of a queued batch was neither run nor dropped", round, it.seq)
			}
		}
		if max := len(full) + len(partial); len(dropped) > max {
			t.Fatalf("round %d: Drain dropped %d items, more than the %d added", round, len(dropped), max)
		}
	}
}

// TestLaneTable: a stripe's table of lanes finds every lane put and not
// deleted, and no other, through random puts and deletes, with hashes
// that collide often (a few distinct values) and with keyHash's.
func TestLaneTable(t *testing.T) {
	for _, hashes := range []uint32{3, 64, 0} { // 0: d.keyHash
		t.Run(fmt.Sprint("hashes=", hashes), func(t *testing.T) {
			d := New[int](Config{})
			defer d.Close()
			var tab laneTable[int]
			want := map[string]*Lane[int]{}
			seed := uint32(1)
			rnd := func(n int) int { // xorshift: the test is the same every run
				seed ^= seed << 13
				seed ^= seed >> 17
				seed ^= seed << 5
				return int(seed % uint32(n))
			}
			hashOf := func(key string) uint32 {
				if hashes == 0 {
					return d.keyHash(key)
				}
				return d.keyHash(key) % hashes
			}
			for op := range 20000 {
				key := fmt.Sprint("k", rnd(300))
				if l := want[key]; l != nil && rnd(2) == 0 {
					tab.del(l)
					delete(want, key)
				} else if l == nil {
					l = &Lane[int]{key: key, h: hashOf(key)}
					tab.put(l)
					want[key] = l
				}
				if op%97 != 0 {
					continue
				}
				if tab.n != len(want) {
					t.Fatalf("op %d: %d lanes in the table, want %d", op, tab.n, len(want))
				}
				for k := range 300 {
					key := fmt.Sprint("k", k)
					if got := tab.get(hashOf(key), key); got != want[key] {
						t.Fatalf("op %d: get(%q) = %p, want %p", op, key, got, want[key])
					}
				}
			}
			seen := 0
			for _, sl := range tab.slots {
				if sl.l != nil {
					seen++
				}
			}
			if seen != len(want) || 2*seen > len(tab.slots) {
				t.Fatalf("%d slots used of %d, want %d at most half", seen, len(tab.slots), len(want))
			}
		})
	}
}

// TestKeyHashSeeded: each Dispatcher hashes keys under a seed of its own,
// so keys crafted to share one hash (as anyone can for FNV-1a) do not
// share it in a running dispatcher: two dispatchers disagree on the hashes
// of a few keys.
func TestKeyHashSeeded(t *testing.T) {
	a, b := New[int](Config{}), New[int](Config{})
	defer a.Close()
	defer b.Close()
	same := 0
	for k := range 8 {
		key := fmt.Sprint("k", k)
		if a.keyHash(key) == b.keyHash(key) {
			same++
		}
	}
	if same == 8 {
		t.Fatal("two dispatchers hash 8 keys alike: keyHash is not seeded")
	}
}

// TestBigLaneStaysParked: a key whose items piled up beyond maxFreeItems
// before its worker caught up keeps its lane (and the lane's ring) when it
// empties, so that the next pile costs no allocation; a second such key
// in the stripe does not (one big lane a stripe).
func TestBigLaneStaysParked(t *testing.T) {
	d := New[int](Config{})
	pile := func(key string) {
		for i := range 3 * maxFreeItems {
			d.Add(key, i)
		}
		l := d.Next(nil, nil)
		n := 1
		for d.Done(l) {
			n++
		}
		if n != 3*maxFreeItems {
			t.Fatalf("ran %d items, want %d", n, 3*maxFreeItems)
		}
	}
	pile("k")
	if allocs := testing.AllocsPerRun(20, func() { pile("k") }); allocs != 0 {
		t.Errorf("a big lane's pile: %v allocations, want 0", allocs)
	}
	st, h := d.stripeOf("k")
	if l := st.keys.get(h, "k"); l == nil || l.state != parked || st.bigLane != l {
		t.Fatalf("the big lane is not parked: %+v", l)
	}
	// Another key of the same stripe: its big lane is not kept.
	other := ""
	for i := 0; other == ""; i++ {
		if s, _ := d.stripeOf(fmt.Sprint(i)); s == st {
			other = fmt.Sprint(i)
		}
	}
	pile(other)
	if l := st.keys.get(d.keyHash(other), other); l != nil {
		t.Errorf("a second big lane stayed parked in the stripe")
	}
	// Once the big lane runs again, the stripe may park a big lane anew.
	pile("k")
	if l := st.keys.get(h, "k"); l == nil || st.bigLane != l {
		t.Errorf("the big lane was not parked again")
	}
}
