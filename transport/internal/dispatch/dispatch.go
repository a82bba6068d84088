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
package dispatch

import "sync"

// Config configures a Dispatcher. The zero value has no limits and a turn
// of DefaultTurn.
type Config struct {
	// KeyLimit is how many items of one key may wait before TryAdd
	// refuses another of that key; 0 means no limit.
	KeyLimit int
	// Limit is how many items may wait in all before TryAdd refuses; 0
	// means no limit.
	Limit int
	// Turn is how many items of one lane a worker runs in a row while
	// other lanes are ready before it lets them go first: a worker that
	// keeps its lane saves a trip through the ready queue. Values below 1
	// mean DefaultTurn.
	Turn int
}

// DefaultTurn is Config.Turn's default.
const DefaultTurn = 64

// Dispatcher orders items of type T by key. Safe for concurrent use.
type Dispatcher[T any] struct {
	keyLimit, limit, turn int

	mu      sync.Mutex
	keys    map[string]*Lane[T] // keyed lanes with unfinished items
	ready   ring[*Lane[T]]
	waiting int           // items not held by a worker or a holder
	idle    int           // workers blocked in Next
	wake    chan struct{} // one pending wake-up for an idle worker
	room    chan struct{} // closed when an item is taken; nil while nobody waits for room
	closed  bool
	done    chan struct{} // closed by Close
	free    []*Lane[T]    // recycled lanes
}

// Lane is the unfinished items of one key, in order (or one keyless item).
// Its holder (the worker that took it with Next, or the caller of Hold)
// may read Head and use Attempt; nothing else of it.
type Lane[T any] struct {
	key     string
	keyed   bool
	items   ring[T]
	head    T    // items' front while held: Head reads it without the lock
	held    bool // a worker or a Hold holds the head
	owner   any  // the worker holding it, as passed to Next
	ran     int  // items run in this worker's turn
	removed bool // Drain dropped it
	// room is closed when an item of the lane is taken; nil while no
	// TryAdd refused for the lane's KeyLimit waits for it.
	room chan struct{}

	// Attempt is the holder's count of attempts at Head, for transports
	// that retry in place; it is 0 when a new item becomes the head.
	Attempt int
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
	return &Dispatcher[T]{
		keyLimit: max(cfg.KeyLimit, 0),
		limit:    max(cfg.Limit, 0),
		turn:     turn,
		keys:     make(map[string]*Lane[T]),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
}

// Add queues item behind the unfinished items of key ("" for none: it runs
// in parallel with everything). It never blocks and ignores the limits.
// After Close or Drain it still queues (a later Drain drops it).
func (d *Dispatcher[T]) Add(key string, item T) {
	d.mu.Lock()
	var l *Lane[T]
	if key != "" {
		l = d.keys[key]
	}
	d.addLocked(key, item, l)
	d.mu.Unlock()
}

// TryAdd queues item as Add does, unless key already has KeyLimit items
// waiting or the dispatcher has Limit items waiting. Then it returns false,
// a channel that is closed when room may have come (try again): when a
// worker takes an item of key, if key was full, else when a worker takes
// any item; and the worker holding key's lane (as passed to Next), nil when
// no worker does.
func (d *Dispatcher[T]) TryAdd(key string, item T) (ok bool, room <-chan struct{}, owner any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	full := d.limit > 0 && d.waiting >= d.limit
	var l *Lane[T]
	if key != "" {
		l = d.keys[key]
	}
	keyFull := l != nil && d.keyLimit > 0 && l.waitingItems() >= d.keyLimit
	if !full && !keyFull {
		d.addLocked(key, item, l)
		return true, nil, nil
	}
	if l != nil && l.held {
		owner = l.owner
	}
	if keyFull {
		// Only a take of this key makes room for it: waking on every other
		// key's take would spin the producer.
		if l.room == nil {
			l.room = make(chan struct{})
		}
		return false, l.room, owner
	}
	if d.room == nil {
		d.room = make(chan struct{})
	}
	return false, d.room, owner
}

// addLocked queues item of key; l is key's lane, nil when it has none (or
// for a keyless item).
func (d *Dispatcher[T]) addLocked(key string, item T, l *Lane[T]) {
	d.waiting++
	if l != nil {
		l.items.push(item) // its holder or the ready queue runs it in turn
		return
	}
	l = d.newLane(key)
	l.items.push(item)
	if l.keyed {
		d.keys[key] = l
	}
	d.readyLocked(l)
}

// wakeRoom closes l.room, if a TryAdd waits for it.
func (l *Lane[T]) wakeRoom() {
	if l.room != nil {
		close(l.room)
		l.room = nil
	}
}

// waitingItems counts l's items that wait for a worker.
func (l *Lane[T]) waitingItems() int {
	if l.held {
		return l.items.len() - 1
	}
	return l.items.len()
}

func (d *Dispatcher[T]) newLane(key string) *Lane[T] {
	var l *Lane[T]
	if n := len(d.free); n > 0 {
		l = d.free[n-1]
		d.free[n-1] = nil
		d.free = d.free[:n-1]
	} else {
		l = new(Lane[T])
	}
	l.key, l.keyed = key, key != ""
	return l
}

// maxFree and maxFreeItems bound what the recycled lanes keep.
const (
	maxFree      = 1024
	maxFreeItems = 64
)

func (d *Dispatcher[T]) recycle(l *Lane[T]) {
	l.wakeRoom()
	if l.keyed {
		delete(d.keys, l.key)
	}
	if len(d.free) >= maxFree || l.items.cap() > maxFreeItems {
		return
	}
	l.items.reset()
	*l = Lane[T]{items: l.items}
	d.free = append(d.free, l)
}

// readyLocked puts l at the end of the ready queue and wakes an idle
// worker.
func (d *Dispatcher[T]) readyLocked(l *Lane[T]) {
	l.held, l.owner, l.ran = false, nil, 0
	d.ready.push(l)
	if d.idle > 0 {
		select {
		case d.wake <- struct{}{}:
		default: // a wake-up is pending; the woken worker passes it on
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
	d.mu.Lock()
	for {
		if l, ok := d.ready.pop(); ok {
			d.takeLocked(l, owner)
			if d.ready.len() > 0 && d.idle > 0 {
				select {
				case d.wake <- struct{}{}: // pass the wake-up on
				default:
				}
			}
			d.mu.Unlock()
			return l
		}
		if d.closed {
			d.mu.Unlock()
			return nil
		}
		d.idle++
		d.mu.Unlock()
		select {
		case <-d.wake:
		case <-d.done:
		case <-stop:
			d.mu.Lock()
			d.idle--
			d.mu.Unlock()
			return nil
		}
		d.mu.Lock()
		d.idle--
	}
}

// takeLocked makes owner the holder of l, whose head stops waiting.
func (d *Dispatcher[T]) takeLocked(l *Lane[T], owner any) {
	l.held, l.owner = true, owner
	l.head = l.items.front() // Add may grow items while the holder reads Head
	d.waiting--
	l.wakeRoom()
	if d.room != nil {
		close(d.room)
		d.room = nil
	}
}

// Done finishes l's head, which its worker ran. It returns true when the
// worker keeps l and runs its next item (the new Head) now; otherwise the
// lane went back to the ready queue, or away with its last item, and the
// worker must not touch it again.
func (d *Dispatcher[T]) Done(l *Lane[T]) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l.removed {
		return false
	}
	var zero T
	l.items.popFront(zero)
	l.head, l.Attempt = zero, 0
	if l.items.len() == 0 {
		d.recycle(l)
		return false
	}
	l.ran++
	if l.ran < d.turn || d.ready.len() == 0 {
		if l.ran >= d.turn {
			l.ran = 0 // nobody else is waiting: a new turn
		}
		d.takeLocked(l, l.owner)
		return true
	}
	d.readyLocked(l)
	return false
}

// Release hands l back unfinished, its head not run (or to be run again
// at once), for any worker.
func (d *Dispatcher[T]) Release(l *Lane[T]) {
	d.mu.Lock()
	if !l.removed {
		d.waiting++
		d.readyLocked(l)
	}
	d.mu.Unlock()
}

// Hold keeps l's head with the caller, to be run again later: no worker
// holds l any more, and no worker takes it until the caller calls Ready.
// The key's later items wait behind it; other keys go on.
func (d *Dispatcher[T]) Hold(l *Lane[T]) {
	d.mu.Lock()
	l.owner, l.ran = nil, 0
	d.mu.Unlock()
}

// Ready puts a lane the caller held (see Hold) back in the ready queue.
func (d *Dispatcher[T]) Ready(l *Lane[T]) {
	d.Release(l)
}

// Waiting returns how many items wait for a worker, in all and of key.
func (d *Dispatcher[T]) Waiting(key string) (all, ofKey int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.keys[key]; l != nil {
		ofKey = l.waitingItems()
	}
	return d.waiting, ofKey
}

// ReadyLanes returns how many lanes wait in the ready queue for a worker:
// a producer that TryAdd refused for the total Limit (not its key's) can
// tell whether a free worker would make room (a lane is ready) or only
// the holders of lanes can.
func (d *Dispatcher[T]) ReadyLanes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ready.len()
}

// Close makes Next return nil once no lane is ready, instead of waiting,
// and wakes the workers that wait. Items added later are still run by
// workers that call Next. Idempotent.
func (d *Dispatcher[T]) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		close(d.done)
	}
	for _, l := range d.keys {
		l.wakeRoom()
	}
	if d.room != nil {
		close(d.room)
		d.room = nil
	}
}

// Drain removes every item nobody holds, calling drop on each, and returns
// how many it dropped. The head of a held lane stays with its holder (a
// Done, Release or Ready on it afterwards does nothing), but the items
// behind it are dropped. Call it once no worker runs, to tear down.
func (d *Dispatcher[T]) Drain(drop func(T)) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	var zero T
	take := func(l *Lane[T], keep int) {
		for l.items.len() > keep {
			drop(l.items.popBack(zero))
			n++
		}
	}
	for {
		l, ok := d.ready.pop()
		if !ok {
			break
		}
		take(l, 0)
		l.wakeRoom()
		l.removed = true
		if l.keyed {
			delete(d.keys, l.key)
		}
	}
	for key, l := range d.keys { // held lanes
		take(l, 1)
		l.wakeRoom()
		l.removed = true
		delete(d.keys, key)
	}
	d.waiting = 0
	if d.room != nil {
		close(d.room)
		d.room = nil
	}
	return n
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
		buf := make([]T, max(4, 2*len(r.buf)))
		for i := range r.n {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

func (r *ring[T]) front() T { return r.buf[r.head] }

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
