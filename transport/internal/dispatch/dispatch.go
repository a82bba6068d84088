// Package dispatch is the one place where busway's transports keep key
// order: the items of one key run one at a time, in the order they were
// added, while different keys (and items without a key) run in parallel on
// the transport's workers. chanbus, nats and kafka all hand their received
// messages to a Dispatcher; what differs between them (how a message is
// acknowledged, retried or abandoned) stays in the transport, around the
// few calls below.
//
// # Lanes
//
// The unfinished items of one key form a Lane, in order; a keyless item has
// a lane of its own. A lane is at any moment in exactly one of three hands:
//
//   - the ready queue, waiting for a worker;
//   - a worker, which took it with Next and runs its Head; Done finishes
//     the head (the worker may keep the lane for its next item, see
//     Config.Turn), Release hands the lane back unfinished, Hold keeps the
//     head for later (a retry backoff);
//   - its holder after Hold, which makes it ready again with Ready.
//
// A keyed lane that ran empty may stay parked under its key (a bounded
// number of them), so that the key's next item needs no new lane.
//
// Nothing else blocks a lane: a slow or failing key keeps its own lane and
// one worker, never the others, and a worker that finishes a lane's head
// takes whatever lane is ready next.
//
// # Bounds
//
// Add never blocks. A transport whose source it can pause (a fetch loop, a
// pull request) bounds what it adds itself; one whose producers must wait
// (chanbus's Publish) uses TryAdd with Config.KeyLimit and Config.Limit,
// which count the items waiting for a worker: queued, not yet taken.
//
// # Locks
//
// A producer and a worker meet on every item, so the keys are spread over
// stripes, each with its own lock, map of lanes and recycled lanes: a
// producer adding to one key and a worker finishing another take different
// locks. A lane's items and state are guarded by its stripe's lock; the
// ready queue and the idle workers by the dispatcher's, taken after a
// stripe's when both are needed, and only when a lane changes hands. A
// keyless item's lane is never looked up by key, so it belongs to no
// stripe: the dispatcher's lock guards it while it changes hands, and its
// producer and holder take no other.
//
// AddAll, for a producer with many items at once, takes each stripe's lock
// once for the items of its keys, marking the lanes they make ready, then
// the dispatcher's once to put those in the ready queue and signals one
// idle worker: a lane so marked is ready to every other caller (a producer
// queues behind it, nobody holds it), it only waits a moment longer for a
// worker. Without limits, AddAll also takes the batch of each lane it
// readies, as the worker's take would, under the stripe's lock it holds
// anyway: a worker that passes no owner then takes such a lane with the
// dispatcher's lock alone, and a solo worker (Config.Workers 1) takes
// several at once.
package dispatch

import (
	"hash/maphash"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"
)

// Config configures a Dispatcher. The zero value has no limits and a turn
// of DefaultTurn.
type Config struct {
	// KeyLimit is how many items of one key may wait before TryAdd
	// refuses another of that key; 0 means no limit.
	KeyLimit int
	// Limit is how many items may wait in all before TryAdd refuses; 0
	// means no limit. Producers that add at the same moment may pass it by
	// one item each.
	Limit int
	// Workers is the number of workers that call Next, when the caller
	// knows it: with one, Next takes several ready lanes whose batches
	// their producers took (see AddAll) under one taking of the
	// dispatcher's lock, and hands them out in turn without it, as no
	// other worker could run them meanwhile. 0 means unknown.
	Workers int
	// Turn is how many items of one lane a worker runs in a row while
	// other lanes are ready before it lets them go first: a worker that
	// keeps its lane saves a trip through the ready queue. Values below 1
	// mean DefaultTurn.
	Turn int
}

// DefaultTurn is Config.Turn's default.
const DefaultTurn = 64

// stripes is the number of key stripes (a power of two).
const stripes = 16

// Dispatcher orders items of type T by key. Safe for concurrent use.
type Dispatcher[T any] struct {
	keyLimit, limit, turn int
	// handOver: with no limits, AddAll takes a lane's batch for the worker
	// that will take the lane (see handOver).
	handOver bool
	// solo: one worker (Config.Workers). mine is then the lanes it took
	// from the ready queue ahead, in order, handed over (see Next); only
	// the worker touches it (and Drain, once no worker runs).
	solo bool
	mine ring[*Lane[T]]

	stripes [stripes]stripe[T]
	waiting atomic.Int64 // items not held by a worker or a holder
	// roomWanted: a TryAdd refused for Limit waits on room; a take then
	// closes room (it looks after taking, the TryAdd after asking).
	roomWanted atomic.Bool
	readyLen   atomic.Int64 // ready.len(), read without mu

	mu    sync.Mutex
	ready ring[*Lane[T]]
	loose []*Lane[T]    // recycled keyless lanes
	idle  int           // workers blocked in Next
	wake  chan struct{} // one pending wake-up for an idle worker
	// woken: a wake-up is in wake, or about to be, or a worker took it and
	// has not yet taken mu again; no other is sent meanwhile (see
	// wakeLocked).
	woken  bool
	room   chan struct{} // closed when an item is taken; nil while nobody waits for Limit
	closed bool
	// drained: Drain ran, and nothing is queued any more. Set holding
	// every stripe's lock and mu, so either lock suffices to read it.
	drained bool
	done    chan struct{} // closed by Close
	// seed is keyHash's, new for each Dispatcher: keys come from outside
	// (a broker's producers), and a hash they cannot predict keeps them
	// from crowding one stripe, or one probe run of a laneTable (FNV-1a,
	// unseeded, let anyone craft keys of one hash).
	seed maphash.Seed
}

// stripe is the lanes of the keys that hash to it, under one lock.
type stripe[T any] struct {
	mu     sync.Mutex
	keys   laneTable[T] // keyed lanes with unfinished items, or parked
	free   []*Lane[T]   // recycled lanes
	parked int          // empty lanes kept in keys
	// bigLane is the one parked lane whose ring's capacity is above
	// maxFreeItems (see empty), or nil.
	bigLane *Lane[T]
	_       [64]byte // keeps neighbouring stripes' locks off one cache line
}

type laneState uint8

const (
	ready  laneState = iota // in the ready queue, or being taken from it
	held                    // a worker or a Hold holds the head
	parked                  // empty, kept in its stripe's keys for the key's next item
)

// Lane is the unfinished items of one key, in order (or one keyless item).
// Its holder (the worker that took it with Next, or the caller of Hold)
// may read Head and use Attempt; nothing else of it.
//
// A worker that takes a lane takes a batch of its items at once (as many
// as are queued, up to what is left of its turn): it runs them one by one,
// and Done passes from one to the next without a lock, touching no memory
// the producers write. The producers' fields and the holder's are on
// separate cache lines.
type Lane[T any] struct {
	// Guarded by st.mu; written by producers.
	key     string
	st      *stripe[T]
	h       uint32  // keyHash(key)
	items   ring[T] // the items not in batch
	state   laneState
	removed bool // Drain dropped it
	// filling: addBatch readied l in the batch it queues, and puts the
	// batch's items of l's key in l.batch directly (see addBatch).
	filling bool
	owner   any // the worker holding it, as passed to Next
	// room is closed when an item of the lane is taken; nil while no
	// TryAdd refused for the lane's KeyLimit waits for it.
	room chan struct{}
	_    [64]byte

	// The holder's: the items taken with the lane, batch[bi] the head.
	// Changed under st.mu, or by the holder alone between its take and
	// the Done, Release or Hold that gives the lane up.
	batch []T
	bi    int
	head  T   // batch[bi]
	ran   int // items run in this worker's turn
	// handed: AddAll took the batch for the worker that takes the lane
	// (see handLocked), and none did yet. Set under st.mu before the
	// lane is in the ready queue, cleared under d.mu when it leaves it (or
	// by Drain, which holds both).
	handed bool

	// Attempt is the holder's count of attempts at Head, for transports
	// that retry in place; it is 0 when a new item becomes the head.
	Attempt int
	_       [64]byte
}

// Key returns the lane's key, "" for a keyless item.
func (l *Lane[T]) Key() string { return l.key }

// Head returns the item the lane's holder runs.
func (l *Lane[T]) Head() T { return l.head }

// New returns a Dispatcher.
func New[T any](cfg Config) *Dispatcher[T] {
	turn := cfg.Turn
	if turn < 1 {
		turn = DefaultTurn
	}
	d := &Dispatcher[T]{
		keyLimit: max(cfg.KeyLimit, 0),
		limit:    max(cfg.Limit, 0),
		turn:     turn,
		handOver: cfg.KeyLimit <= 0 && cfg.Limit <= 0,
		solo:     cfg.Workers == 1,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		seed:     maphash.MakeSeed(),
	}
	return d
}

// stripeOf returns key's stripe and keyHash(key).
func (d *Dispatcher[T]) stripeOf(key string) (*stripe[T], uint32) {
	h := d.keyHash(key)
	return &d.stripes[h%stripes], h
}

// keyHash is key's hash under d's seed: its stripe's index (modulo
// stripes) and its hash in the stripe's laneTable.
func (d *Dispatcher[T]) keyHash(key string) uint32 {
	return uint32(maphash.String(d.seed, key))
}

// Add queues item behind the unfinished items of key ("" for none: it runs
// in parallel with everything). It never blocks and ignores the limits.
// After Close it still queues; after Drain it queues nothing and returns
// false.
func (d *Dispatcher[T]) Add(key string, item T) (queued bool) {
	if key == "" {
		return d.addKeyless(item)
	}
	st, h := d.stripeOf(key)
	st.mu.Lock()
	if d.drained {
		st.mu.Unlock()
		return false
	}
	wake := d.addLocked(st, h, key, item, st.keys.get(h, key))
	st.mu.Unlock()
	d.signal(wake)
	return true
}

// maxBatch is how many items AddAll queues under one taking of each lock:
// its scratch (keys, stripes, lanes readied) lives on the stack.
const maxBatch = 64

// AddAll queues items, in order, as that many Adds would (key(item) is
// each one's key), but takes each stripe's lock once for all the items of
// its keys and the dispatcher's once for readying every lane that became
// ready, in the order of the items that readied them, and signals an idle
// worker once (the woken worker passes the wake-up on while lanes are
// ready, see Next): a producer that has many items at once (a fetch
// response) pays one lock per stripe and one wake-up, not one of each per
// item. An item's lane becomes ready only once every item of the batch
// (of at most maxBatch; longer ones are queued as several) is queued, as
// if they had been added at once. It never blocks and ignores the limits.
// After Drain it queues nothing and returns false; an AddAll that races
// with Drain may return false after queueing some items, and those are
// among the items Drain dropped.
func (d *Dispatcher[T]) AddAll(items []T, key func(T) string) (queued bool) {
	for len(items) > 0 {
		n := min(len(items), maxBatch)
		if !d.addBatch(items[:n], key) {
			return false
		}
		items = items[n:]
	}
	return true
}

// addBatch is AddAll for at most maxBatch items.
func (d *Dispatcher[T]) addBatch(items []T, keyOf func(T) string) (queued bool) {
	var (
		keys    [maxBatch]string
		hashes  [maxBatch]uint32   // keyHash of keys[i]
		stripeI [maxBatch]uint8    // the item's stripe; stripes for a keyless item
		readied [maxBatch]*Lane[T] // the keyed lane items[i] made ready
		// The keyed items' indexes grouped by stripe, in order within
		// each (one counting sort, not a scan of the batch per stripe):
		// stripe s's are order[start[s]:start[s+1]].
		order   [maxBatch]uint8
		start   [stripes + 1]uint8
		keyless int
	)
	for i, it := range items {
		k := keyOf(it)
		keys[i] = k
		if k == "" {
			stripeI[i] = stripes
			keyless++
			continue
		}
		h := d.keyHash(k)
		hashes[i] = h
		s := h % stripes
		stripeI[i] = uint8(s)
		start[s+1]++
	}
	for s := range stripes {
		start[s+1] += start[s]
	}
	next := start
	for i := range items {
		if s := stripeI[i]; s != stripes {
			order[next[s]] = uint8(i)
			next[s]++
		}
	}
	readiedAny := false
	for s := range stripes {
		from, to := start[s], start[s+1]
		if from == to {
			continue
		}
		st := &d.stripes[s]
		st.mu.Lock()
		if d.drained {
			st.mu.Unlock()
			return false
		}
		for _, i := range order[from:to] {
			var l *Lane[T]
			if d.handOver {
				if l = d.handLocked(st, hashes[i], keys[i], items[i]); l == nil {
					continue
				}
			} else if l = d.queueLocked(st, hashes[i], keys[i], items[i], st.keys.get(hashes[i], keys[i])); l == nil {
				continue
			}
			// Ready, but not in the ready queue until the batch's
			// readying below: a producer only queues behind its items, no
			// worker holds it, and a Drain meanwhile drops it (it is in
			// st.keys) and sets drained, which the readying checks.
			l.markReady()
			readied[i] = l
			readiedAny = true
		}
		if d.handOver {
			for _, i := range order[from:to] {
				if l := readied[i]; l != nil {
					l.bi, l.head = 0, l.batch[0]
					l.handed, l.filling = true, false
				}
			}
		}
		// Counted before a worker can take them (a holder's Done, once
		// st.mu is released).
		d.waiting.Add(int64(to - from))
		st.mu.Unlock()
	}
	if !readiedAny && keyless == 0 {
		return true
	}
	if testHookBatchReadying != nil {
		testHookBatchReadying()
	}
	d.mu.Lock()
	if d.drained {
		// Drain dropped the lanes readied above with their items; the
		// keyless items were not queued.
		d.mu.Unlock()
		return false
	}
	d.waiting.Add(int64(keyless))
	for i := range items {
		l := readied[i]
		if stripeI[i] == stripes {
			l = d.looseLane()
			l.items.push(items[i])
			l.markReady()
		} else if l == nil {
			continue
		}
		d.ready.push(l)
	}
	d.readyLen.Store(int64(d.ready.len()))
	wake := d.wakeLocked()
	d.mu.Unlock()
	d.signal(wake)
	return true
}

// handLocked is queueLocked for addBatch without limits, which hands the
// batch of each lane it readies to the worker that will take the lane
// from the ready queue: that worker's Next then takes no stripe lock for
// it. The batch is what take would have taken, as the lane's turn is new:
// the item that readies the lane and the batch's later items of its key,
// up to the turn, go to l.batch directly (l.filling until addBatch is done
// with the stripe), the rest to its items. Only without limits, which a
// take would count (TryAdd's KeyLimit counts the items not in a batch, and
// a take wakes those it refused). Such a lane is held by nobody
// meanwhile, as a ready lane is: a producer queues behind its batch, and
// Drain drops it, as it drops a ready lane's items; l.handed is true from
// the end of the stripe's queueing until a worker takes l (or Drain drops
// it). It returns the lane item readied, or nil. h is keyHash(key); st.mu
// is held.
func (d *Dispatcher[T]) handLocked(st *stripe[T], h uint32, key string, item T) *Lane[T] {
	l := st.keys.get(h, key)
	switch {
	case l == nil:
		l = st.newLane(h, key)
	case l.filling:
		if len(l.batch) < d.turn {
			l.batch = append(l.batch, item)
		} else {
			l.items.push(item)
		}
		return nil
	case l.state == parked: // its items and batch are empty
		st.unpark(l)
	default:
		l.items.push(item)
		return nil
	}
	l.batch = append(l.batch, item)
	l.filling = true
	return l
}

// testHookBatchReadying, set by tests, runs between addBatch's queueing
// and its readying, where a Drain may come.
var testHookBatchReadying func()

// looseLane returns a recycled keyless lane, or a new one. d.mu is held.
func (d *Dispatcher[T]) looseLane() *Lane[T] {
	if n := len(d.loose); n > 0 {
		l := d.loose[n-1]
		d.loose[n-1] = nil
		d.loose = d.loose[:n-1]
		return l
	}
	return new(Lane[T])
}

// addKeyless queues a keyless item in a lane of its own. Such a lane is
// never looked up (it has no key), so only the dispatcher's lock guards
// it: its producer and its holder never take a stripe's.
func (d *Dispatcher[T]) addKeyless(item T) (queued bool) {
	d.mu.Lock()
	if d.drained {
		d.mu.Unlock()
		return false
	}
	d.waiting.Add(1)
	l := d.looseLane()
	l.items.push(item)
	wake := d.readyLocked(l)
	d.mu.Unlock()
	d.signal(wake)
	return true
}

// TryAdd queues item as Add does, unless key already has KeyLimit items
// waiting or the dispatcher has Limit items waiting. Then it returns false,
// a channel that is closed when room may have come (try again): when a
// worker takes an item of key, if key was full, else when a worker takes
// any item; and the worker holding key's lane (as passed to Next), nil when
// no worker does. After Drain it queues nothing and returns false with a
// nil room: there will never be room.
func (d *Dispatcher[T]) TryAdd(key string, item T) (ok bool, room <-chan struct{}, owner any) {
	if key == "" {
		if d.limit > 0 && d.waiting.Load() >= int64(d.limit) {
			return false, d.totalRoom(), nil
		}
		if !d.addKeyless(item) {
			return false, nil, nil
		}
		return true, nil, nil
	}
	st, h := d.stripeOf(key)
	st.mu.Lock()
	if d.drained {
		st.mu.Unlock()
		return false, nil, nil
	}
	full := d.limit > 0 && d.waiting.Load() >= int64(d.limit)
	l := st.keys.get(h, key)
	keyFull := l != nil && d.keyLimit > 0 && l.waitingItems() >= d.keyLimit
	if !full && !keyFull {
		wake := d.addLocked(st, h, key, item, l)
		st.mu.Unlock()
		d.signal(wake)
		return true, nil, nil
	}
	defer st.mu.Unlock()
	if l != nil && l.state == held {
		owner = l.owner
	}
	if keyFull {
		// Only a take of this key makes room for it: waking on every other
		// key's take would spin the producer. Takes of the key hold st.mu.
		if l.room == nil {
			l.room = make(chan struct{})
		}
		return false, l.room, owner
	}
	return false, d.totalRoom(), owner
}

// totalRoom returns the channel a take closes, for a TryAdd refused for
// Limit.
func (d *Dispatcher[T]) totalRoom() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.room == nil {
		d.room = make(chan struct{})
	}
	ch := d.room
	d.roomWanted.Store(true)
	if d.waiting.Load() < int64(d.limit) || d.closed || d.drained {
		// A take came between the refusal and roomWanted: it did not see
		// the flag, so say "try again" now.
		d.wakeRoomLocked()
	}
	return ch
}

// addLocked queues item of key (not "", its keyHash h); l is key's lane,
// nil when it has none. st.mu is held. It reports whether to signal an idle
// worker (see ready1).
func (d *Dispatcher[T]) addLocked(st *stripe[T], h uint32, key string, item T, l *Lane[T]) (wake bool) {
	d.waiting.Add(1)
	if l = d.queueLocked(st, h, key, item, l); l != nil {
		return d.ready1(l)
	}
	return false
}

// queueLocked queues item of key (not "", its keyHash h) in key's lane l (nil when it has
// none: a new one) and returns the lane when it is to be readied now (new,
// or parked until now), nil when the item queued behind the lane's holder
// or its place in the ready queue, which runs it in turn. st.mu is held.
func (d *Dispatcher[T]) queueLocked(st *stripe[T], h uint32, key string, item T, l *Lane[T]) *Lane[T] {
	if l == nil {
		l = st.newLane(h, key)
		l.items.push(item)
		return l
	}
	l.items.push(item)
	if l.state != parked {
		return nil
	}
	st.unpark(l)
	return l
}

// waitingItems counts l's items that wait for a worker: those a holder
// took (its batch) do not.
func (l *Lane[T]) waitingItems() int { return l.items.len() }

// wakeRoom closes l.room, if a TryAdd waits for it.
func (l *Lane[T]) wakeRoom() {
	if l.room != nil {
		close(l.room)
		l.room = nil
	}
}

// newLane returns a lane for key, whose keyHash is h, in st's table.
func (st *stripe[T]) newLane(h uint32, key string) *Lane[T] {
	var l *Lane[T]
	if n := len(st.free); n > 0 {
		l = st.free[n-1]
		st.free[n-1] = nil
		st.free = st.free[:n-1]
	} else {
		l = &Lane[T]{st: st}
	}
	// A copy: the lane may stay parked under its key long after its items
	// (whose keys may point into larger buffers, as Kafka's decoded keys
	// do) are gone.
	l.key, l.h = strings.Clone(key), h
	st.keys.put(l)
	return l
}

// maxFree and maxFreeItems bound what the recycled lanes of a stripe keep.
// maxParked bounds the emptied lanes a stripe keeps under their keys: a
// key whose items come one at a time (its worker is faster than its
// producer) then finds its lane again, without a map insert and delete per
// item. Parked lanes stay until Drain; once a stripe has maxParked, further
// keys' lanes are recycled when they empty, as if nothing were parked.
// 64 a stripe is 1,024 keys a dispatcher (about 350 KB of lanes when all
// are parked): Kafka's consume benchmark, 1,000 keys, about 62 a stripe,
// found most of them parked instead of a map insert and delete per message
// with 16.
const (
	maxFree      = 64
	maxFreeItems = 64
	maxParked    = 64
	// maxBigItems bounds the ring of the one big lane a stripe may keep
	// parked besides (see empty).
	maxBigItems = 4096
)

// empty is done with a lane whose last item finished: it stays parked
// under its key, or is recycled. st.mu is held.
func (st *stripe[T]) empty(l *Lane[T]) {
	l.wakeRoom()
	l.owner, l.ran = nil, 0
	if st.parked < maxParked {
		// A lane whose items piled up beyond maxFreeItems stays parked
		// too, one a stripe: a key whose worker catches up with its
		// producer again and again (a transport's one lane at Concurrency
		// 1, whose producer adds items one at a time) would otherwise get
		// a new lane and regrow its ring (1, 2, 4 ... items) each time.
		switch c := l.items.cap(); {
		case c <= maxFreeItems:
			l.state = parked
			st.parked++
			return
		case c <= maxBigItems && st.bigLane == nil:
			l.state = parked
			st.parked++
			st.bigLane = l
			return
		}
	}
	st.keys.del(l)
	if len(st.free) >= maxFree || l.items.cap() > maxFreeItems {
		return
	}
	l.items.reset()
	*l = Lane[T]{st: st, items: l.items, batch: l.batch[:0]}
	st.free = append(st.free, l)
}

// unpark takes l, parked, out of its stripe's parked lanes: an item came
// for it. st.mu is held.
func (st *stripe[T]) unpark(l *Lane[T]) {
	st.parked--
	if st.bigLane == l {
		st.bigLane = nil
	}
}

// ready1 puts l at the end of the ready queue; l's stripe lock is held. It
// reports whether a worker is idle: then the caller calls signal once it
// released its locks, so that the woken worker does not find them taken.
func (d *Dispatcher[T]) ready1(l *Lane[T]) (wake bool) {
	d.mu.Lock()
	wake = d.readyLocked(l)
	d.mu.Unlock()
	return wake
}

// readyLocked is ready1 with d.mu held (and, for a keyed lane, its
// stripe's lock).
func (d *Dispatcher[T]) readyLocked(l *Lane[T]) (wake bool) {
	l.markReady()
	d.ready.push(l)
	d.readyLen.Store(int64(d.ready.len()))
	return d.wakeLocked()
}

// markReady makes l ready for a worker to take, with no holder and a new
// turn; the caller puts it in the ready queue.
func (l *Lane[T]) markReady() { l.state, l.owner, l.ran = ready, nil, 0 }

// wakeLocked reports whether to signal an idle worker (d.mu is held): one
// is idle, and no wake-up is on its way. One at a time is enough, as the
// woken worker passes it on while lanes are ready (see Next), and it
// spares the channel operation that a wake-up already pending (most of
// them, with a producer readying a lane per item) would cost for nothing.
// The caller then signals.
func (d *Dispatcher[T]) wakeLocked() bool {
	if d.idle > 0 && !d.woken {
		d.woken = true
		return true
	}
	return false
}

// signal wakes an idle worker when wake is true (see wakeLocked). A worker
// that goes idle after ready1 looked finds the lane in the ready queue
// first.
func (d *Dispatcher[T]) signal(wake bool) {
	if wake {
		select {
		case d.wake <- struct{}{}:
		default: // not while woken holds (one is pending); kept for safety
		}
	}
}

// Next waits for a ready lane and gives it to the caller, a worker, with
// its head to run; owner is the worker, as TryAdd reports it. Next returns
// nil when stop is closed (stop may be nil), or once the dispatcher is
// closed and no lane is ready.
func (d *Dispatcher[T]) Next(stop <-chan struct{}, owner any) *Lane[T] {
	select {
	case <-stop:
		return nil
	default:
	}
	if d.solo && d.mine.len() > 0 && owner == nil {
		// Taken ahead from the ready queue, its batch handed over.
		var zero *Lane[T]
		l := d.mine.popFront(zero)
		l.handed = false
		return l
	}
	d.mu.Lock()
	for {
		if l, ok := d.ready.pop(); ok {
			if d.solo && owner == nil && l.handed {
				d.takeAheadLocked()
			}
			d.readyLen.Store(int64(d.ready.len()))
			pass := d.ready.len() > 0 && d.wakeLocked() // pass the wake-up on
			if l.key == "" {
				d.takeKeyless(l, owner)
				d.mu.Unlock()
				d.signal(pass)
				return l
			}
			if l.handed && owner == nil {
				// Its producer took its batch (see handLocked): only the
				// items' count is left to take (an owner would be written
				// under the stripe lock).
				l.handed = false
				d.waiting.Add(int64(-len(l.batch)))
				d.mu.Unlock()
				d.signal(pass)
				return l
			}
			handed := l.handed
			l.handed = false
			d.mu.Unlock()
			// Off the queue and not yet held, l is still "ready": a
			// producer only queues behind its items.
			l.st.mu.Lock()
			if handed {
				l.state, l.owner = held, owner
				d.waiting.Add(int64(-len(l.batch)))
			} else {
				d.take(l, owner)
			}
			l.st.mu.Unlock()
			d.signal(pass)
			return l
		}
		if d.closed {
			d.mu.Unlock()
			return nil
		}
		// Park at once, without spinning first: a worker that yields and
		// looks again takes each item the moment it comes, one at a time,
		// and its looking makes the producer's writes cache misses (chanbus
		// at 256B: 690 ns per message with four yields, 390 ns without, on
		// a quiet 2-core machine), while a parked worker finds several
		// items when it wakes.
		d.idle++
		d.mu.Unlock()
		select {
		case <-d.wake:
			d.mu.Lock()
			d.woken = false
		case <-d.done:
			d.mu.Lock()
		case <-stop:
			d.mu.Lock()
			d.idle--
			d.mu.Unlock()
			return nil
		}
		d.idle--
	}
}

// soloAhead is how many lanes a solo worker's Next takes ahead at most.
const soloAhead = 64

// takeAheadLocked moves the handed-over lanes at the front of the ready
// queue (up to soloAhead) to d.mine, for the solo worker: their items stop
// waiting now, and they stay handed until the worker takes each, so that
// Drain drops them whole. d.mu is held.
func (d *Dispatcher[T]) takeAheadLocked() {
	n := 0
	for d.mine.len() < soloAhead {
		l, ok := d.ready.peek()
		if !ok || !l.handed {
			break
		}
		d.ready.pop()
		d.mine.push(l)
		n += len(l.batch)
	}
	if n > 0 {
		d.waiting.Add(int64(-n))
	}
}

// take makes owner the holder of l and takes its batch: the items queued
// now, up to what is left of the turn, stop waiting. l's stripe lock is
// held and l.batch is empty.
func (d *Dispatcher[T]) take(l *Lane[T], owner any) {
	d.takeBatch(l, owner)
	l.wakeRoom()
	if d.roomWanted.Load() {
		d.mu.Lock()
		d.wakeRoomLocked()
		d.mu.Unlock()
	}
}

// takeKeyless is take for a keyless lane, with d.mu held instead (such a
// lane has no room of its own: TryAdd refuses keyless items only for
// Limit).
func (d *Dispatcher[T]) takeKeyless(l *Lane[T], owner any) {
	d.takeBatch(l, owner)
	if d.roomWanted.Load() {
		d.wakeRoomLocked()
	}
}

// takeBatch makes owner the holder of l and moves its batch out of its
// items: those queued now, up to what is left of the turn.
func (d *Dispatcher[T]) takeBatch(l *Lane[T], owner any) {
	l.state, l.owner = held, owner
	n := min(l.items.len(), max(d.turn-l.ran, 1))
	var zero T
	for range n {
		l.batch = append(l.batch, l.items.popFront(zero))
	}
	l.bi, l.head = 0, l.batch[0]
	d.waiting.Add(int64(-n))
}

// wakeRoomLocked closes the room a TryAdd refused for Limit waits on (an
// item was taken, or the dispatcher closed), if one waits. d.mu is held.
func (d *Dispatcher[T]) wakeRoomLocked() {
	if d.room != nil {
		close(d.room)
		d.room = nil
	}
	d.roomWanted.Store(false)
}

// giveBack returns the holder's unrun items (the head among them) to the
// front of l's items. l's stripe lock is held.
func (d *Dispatcher[T]) giveBack(l *Lane[T]) {
	var zero T
	rest := l.batch[l.bi:]
	for i := len(rest) - 1; i >= 0; i-- {
		l.items.pushFront(rest[i])
	}
	d.waiting.Add(int64(len(rest)))
	clear(l.batch)
	l.batch, l.bi, l.head = l.batch[:0], 0, zero
}

// Done finishes l's head, which its worker ran. It returns true when the
// worker keeps l and runs its next item (the new Head) now; otherwise the
// lane went back to the ready queue, or away with its last item, and the
// worker must not touch it again.
func (d *Dispatcher[T]) Done(l *Lane[T]) bool {
	var zero T
	l.batch[l.bi] = zero
	l.bi++
	l.ran++
	l.Attempt = 0
	if l.bi < len(l.batch) {
		// The next item of the batch: it was taken with the lane, and the
		// turn was counted when it was.
		l.head = l.batch[l.bi]
		return true
	}
	l.batch, l.bi, l.head = l.batch[:0], 0, zero
	if l.key == "" {
		// Done with its one item (nobody adds to a keyless lane): recycled.
		d.mu.Lock()
		if !l.removed && len(d.loose) < maxFree*stripes {
			d.loose = append(d.loose, l) // addKeyless readies it again
		}
		d.mu.Unlock()
		return false
	}
	st := l.st
	st.mu.Lock()
	if l.removed {
		st.mu.Unlock()
		return false
	}
	if l.items.len() == 0 {
		st.empty(l)
		st.mu.Unlock()
		return false
	}
	if l.ran < d.turn || d.readyLen.Load() == 0 && d.mine.len() == 0 {
		if l.ran >= d.turn {
			l.ran = 0 // nobody else is waiting: a new turn
		}
		d.take(l, l.owner)
		st.mu.Unlock()
		return true
	}
	wake := d.ready1(l)
	st.mu.Unlock()
	d.signal(wake)
	return false
}

// Release hands l back unfinished, its head not run (or to be run again
// at once), for any worker.
func (d *Dispatcher[T]) Release(l *Lane[T]) {
	if l.key == "" {
		d.mu.Lock()
		wake := false
		if !l.removed {
			d.giveBack(l)
			wake = d.readyLocked(l)
		}
		d.mu.Unlock()
		d.signal(wake)
		return
	}
	l.st.mu.Lock()
	wake := false
	if !l.removed {
		d.giveBack(l)
		wake = d.ready1(l)
	}
	l.st.mu.Unlock()
	d.signal(wake)
}

// Hold keeps l's head with the caller, to be run again later: no worker
// holds l any more, and no worker takes it until the caller calls Ready.
// The key's later items wait behind it; other keys go on.
func (d *Dispatcher[T]) Hold(l *Lane[T]) {
	if l.key == "" { // nobody else reads a keyless lane's owner
		l.owner, l.ran = nil, 0
		return
	}
	l.st.mu.Lock()
	l.owner, l.ran = nil, 0
	l.st.mu.Unlock()
}

// Ready puts a lane the caller held (see Hold) back in the ready queue.
func (d *Dispatcher[T]) Ready(l *Lane[T]) {
	d.Release(l)
}

// Waiting returns how many items wait for a worker, in all and of key.
func (d *Dispatcher[T]) Waiting(key string) (all, ofKey int) {
	if key != "" {
		st, h := d.stripeOf(key)
		st.mu.Lock()
		if l := st.keys.get(h, key); l != nil {
			ofKey = l.waitingItems()
		}
		st.mu.Unlock()
	}
	return int(d.waiting.Load()), ofKey
}

// ReadyLanes returns how many lanes wait in the ready queue for a worker:
// a producer that TryAdd refused for the total Limit (not its key's) can
// tell whether a free worker would make room (a lane is ready) or only
// the holders of lanes can.
func (d *Dispatcher[T]) ReadyLanes() int {
	return int(d.readyLen.Load())
}

// Close makes Next return nil once no lane is ready, instead of waiting,
// and wakes the workers that wait and the producers that wait for room.
// Items added later are still run by workers that call Next. Idempotent.
func (d *Dispatcher[T]) Close() {
	for i := range d.stripes {
		st := &d.stripes[i]
		st.mu.Lock()
		for _, sl := range st.keys.slots {
			if sl.l != nil {
				sl.l.wakeRoom()
			}
		}
		st.mu.Unlock()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		close(d.done)
	}
	d.wakeRoomLocked()
}

// Drain removes every item nobody holds, calling drop on each, and returns
// how many it dropped. The head of a held lane stays with its holder (a
// Done, Release or Ready on it afterwards does nothing), but the items
// behind it are dropped. Nothing is queued after it: Add and TryAdd
// return false (a producer that raced with it either queued before, and
// its item is among the dropped, or finds it drained). Call it once no
// worker runs, to tear down.
func (d *Dispatcher[T]) Drain(drop func(T)) int {
	for i := range d.stripes {
		d.stripes[i].mu.Lock()
		defer d.stripes[i].mu.Unlock()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drained = true
	n := 0
	var zero T
	take := func(l *Lane[T]) {
		for l.items.len() > 0 {
			drop(l.items.popBack(zero))
			n++
		}
		// A holder's items behind its head; all of a batch handed over
		// (see handLocked) that no worker took.
		keep := l.bi + 1
		if l.handed {
			keep, l.handed = 0, false
		}
		if len(l.batch) > keep {
			for _, item := range l.batch[keep:] {
				drop(item)
				n++
			}
			clear(l.batch[keep:])
			l.batch = l.batch[:keep]
		}
		l.wakeRoom()
		l.removed = true
	}
	for {
		l, ok := d.mine.pop() // the solo worker's taken ahead, then the queue
		if !ok {
			if l, ok = d.ready.pop(); !ok {
				break
			}
		}
		take(l)
		if l.key != "" {
			l.st.keys.del(l)
		}
	}
	d.readyLen.Store(0)
	for i := range d.stripes {
		st := &d.stripes[i]
		for _, sl := range st.keys.slots { // held and parked lanes
			if sl.l != nil {
				take(sl.l)
			}
		}
		st.keys = laneTable[T]{}
		st.parked, st.bigLane = 0, nil
	}
	d.waiting.Store(0)
	d.wakeRoomLocked()
	return n
}

// laneTable is a stripe's keyed lanes by key: open addressing with linear
// probing on the keys' hashes (keyHash, which addBatch computes once an
// item for its stripe too), each slot a lane and its hash. It costs less a
// look-up than a map[string]*Lane, which hashes the key again and probes
// groups of slots. At most half the slots are used.
type laneTable[T any] struct {
	slots []laneSlot[T] // a power of two of them, or none
	shift uint8         // 32 - log2(len(slots))
	n     int
}

type laneSlot[T any] struct {
	h uint32
	l *Lane[T]
}

// home is the slot where a hash h's probe begins (Fibonacci hashing: the
// high bits of h times 2^32/phi, as h's low bits pick the stripe and are
// alike within it).
func (t *laneTable[T]) home(h uint32) uint32 { return (h * 2654435769) >> t.shift }

// get returns the lane of key, whose hash is h, or nil.
func (t *laneTable[T]) get(h uint32, key string) *Lane[T] {
	if t.n == 0 {
		return nil
	}
	mask := uint32(len(t.slots) - 1)
	for i := t.home(h); ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.l == nil {
			return nil
		}
		if sl.h == h && sl.l.key == key {
			return sl.l
		}
	}
}

// put adds l, whose key is not in t, under l.h.
func (t *laneTable[T]) put(l *Lane[T]) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	t.insert(l)
	t.n++
}

func (t *laneTable[T]) insert(l *Lane[T]) {
	mask := uint32(len(t.slots) - 1)
	i := t.home(l.h)
	for t.slots[i].l != nil {
		i = (i + 1) & mask
	}
	t.slots[i] = laneSlot[T]{h: l.h, l: l}
}

func (t *laneTable[T]) grow() {
	old := t.slots
	size := max(16, 2*len(old))
	t.slots = make([]laneSlot[T], size)
	t.shift = uint8(32 - bits.TrailingZeros(uint(size)))
	for _, sl := range old {
		if sl.l != nil {
			t.insert(sl.l)
		}
	}
}

// del removes l, which t holds, moving the slots after it in its probe
// run back where their probes would find them (no tombstones).
func (t *laneTable[T]) del(l *Lane[T]) {
	mask := uint32(len(t.slots) - 1)
	i := t.home(l.h)
	for t.slots[i].l != l {
		i = (i + 1) & mask
	}
	for j := i; ; {
		t.slots[i] = laneSlot[T]{}
		for {
			j = (j + 1) & mask
			sl := t.slots[j]
			if sl.l == nil {
				t.n--
				return
			}
			// sl stays unless its home is cyclically outside (i, j].
			k := t.home(sl.h)
			if i <= j && (i < k && k <= j) || i > j && (i < k || k <= j) {
				continue
			}
			t.slots[i] = sl
			i = j
			break
		}
	}
}

// ring is a FIFO queue on a growing circular buffer.
type ring[T any] struct {
	buf     []T
	head, n int
}

func (r *ring[T]) len() int { return r.n }
func (r *ring[T]) cap() int { return len(r.buf) }

func (r *ring[T]) push(v T) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

// pushFront puts v before the first element.
func (r *ring[T]) pushFront(v T) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.head = (r.head - 1 + len(r.buf)) % len(r.buf)
	r.buf[r.head] = v
	r.n++
}

func (r *ring[T]) grow() {
	buf := make([]T, max(4, 2*len(r.buf)))
	for i := range r.n {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

// peek returns the first element, if any, leaving it.
func (r *ring[T]) peek() (T, bool) {
	if r.n == 0 {
		var zero T
		return zero, false
	}
	return r.buf[r.head], true
}

func (r *ring[T]) pop() (T, bool) {
	var zero T
	if r.n == 0 {
		return zero, false
	}
	return r.popFront(zero), true
}

// popFront removes and returns the first element, which must exist,
// clearing its slot with zero.
func (r *ring[T]) popFront(zero T) T {
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return v
}

// popBack removes and returns the last element, which must exist.
func (r *ring[T]) popBack(zero T) T {
	i := (r.head + r.n - 1) % len(r.buf)
	v := r.buf[i]
	r.buf[i] = zero
	r.n--
	return v
}

func (r *ring[T]) reset() {
	clear(r.buf)
	r.head, r.n = 0, 0
}
