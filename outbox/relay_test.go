package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

// orderChecker checks per-key order of delivered events by their Seq.
type orderChecker struct {
	mu    sync.Mutex
	last  map[string]int
	seen  map[string]int // id -> deliveries
	errs  []string
	total int
	dupOK bool // duplicates allowed (across a crash), but not regressions to unseen
}

func (c *orderChecker) handle(_ context.Context, e bus.Event[OrderPlaced]) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil {
		c.last, c.seen = make(map[string]int), make(map[string]int)
	}
	c.total++
	c.seen[e.Data.ID]++
	last, ok := c.last[e.Data.Key]
	if !ok {
		last = -1
	}
	switch {
	case e.Data.Seq == last+1:
		c.last[e.Data.Key] = e.Data.Seq
	case c.dupOK && e.Data.Seq <= last:
		// a re-send of one already seen: harmless with the inbox
	default:
		if len(c.errs) < 10 {
			c.errs = append(c.errs, fmt.Sprintf("key %s: seq %d after %d", e.Data.Key, e.Data.Seq, last))
		}
	}
	return nil
}

func (c *orderChecker) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// writeKeyed writes keys*perKey events, each key's in Seq order, in
// transactions of txSize events, from one writer goroutine per 10 keys.
func writeKeyed(t *testing.T, o *Outbox, keys, perKey, txSize int) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, keys)
	for w := 0; w < keys; w += 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []OrderPlaced
			flush := func() error {
				if len(batch) == 0 {
					return nil
				}
				err := o.Transact(ctx, func(tx *sql.Tx) error {
					for _, ev := range batch {
						if err := Publish(ctx, o, tx, ev, bus.WithKey(ev.Key)); err != nil {
							return err
						}
					}
					return nil
				})
				batch = batch[:0]
				return err
			}
			for seq := range perKey {
				for k := w; k < min(w+10, keys); k++ {
					key := fmt.Sprint("key-", k)
					batch = append(batch, OrderPlaced{ID: fmt.Sprintf("%s-%d", key, seq), Key: key, Seq: seq})
					if len(batch) == txSize {
						if err := flush(); err != nil {
							errs <- err
							return
						}
					}
				}
			}
			if err := flush(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestTwoRelaysKeepOrder: two relays (two "processes", each its own
// *sql.DB and Outbox) on one PostgreSQL outbox, 10,000 events over 50
// keys: all delivered once, per-key order kept, also when the leader stops
// midway and the other takes over.
func TestTwoRelaysKeepOrder(t *testing.T) {
	e := needPostgres(t)
	b, tr := newBus(t)
	c := &orderChecker{}
	if _, err := bus.Subscribe(b, "billing", c.handle, bus.WithConcurrency(8)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	writer := e.newOutbox(t, e.db, b)
	o1 := e.newOutbox(t, e.openDB(t), nil)
	o2 := e.newOutbox(t, e.openDB(t), nil)
	r1, err := NewRelay(o1, tr, RelayOptions{BatchSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	r2 := startRelay(t, o2, tr, RelayOptions{BatchSize: 100})
	if err := r1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	const keys, perKey = 50, 200
	done := make(chan struct{})
	go func() { defer close(done); writeKeyed(t, writer, keys, perKey, 10) }()
	waitFor(t, "3000 events", 60*time.Second, func() bool { return c.distinct() >= 3000 })
	// Stop whichever leads; the other takes over. Stop r1 in any case (the
	// one without cleanup), first r2 if it leads.
	if r2.Stats().Leader {
		t.Log("r2 led first; stopping it")
		if err := r2.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "r1 to take the lead", 30*time.Second, func() bool { return r1.Stats().Leader })
		waitFor(t, "every event", 120*time.Second, func() bool { return c.distinct() >= keys*perKey })
		r1.Stop(context.Background())
	} else {
		t.Log("r1 led first; stopping it")
		if err := r1.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "r2 to take the lead", 30*time.Second, func() bool { return r2.Stats().Leader })
	}
	<-done
	waitFor(t, "every event", 120*time.Second, func() bool { return c.distinct() >= keys*perKey })
	waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.errs) > 0 {
		t.Fatalf("per-key order broken: %v", c.errs)
	}
	if c.total != keys*perKey {
		t.Fatalf("%d deliveries of %d events: published twice without a crash", c.total, keys*perKey)
	}
	t.Logf("r1 published %d, r2 %d", r1.Stats().Published, r2.Stats().Published)
	if r1.Stats().Published == 0 || r2.Stats().Published == 0 {
		t.Fatal("one relay published nothing: no failover happened")
	}
}

var errCrash = errors.New("injected crash between publish and delete")

// TestCrashBetweenPublishAndDelete: a relay that dies after the transport
// accepted a batch and before it deleted the rows: the next relay publishes
// them again (same Message.ID and ce_id), and the inbox consumer applies
// the effect once.
func TestCrashBetweenPublishAndDelete(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		if _, err := e.db.Exec("CREATE TABLE " + e.tbl("invoices") + " (order_id TEXT NOT NULL)"); err != nil {
			t.Fatal(err)
		}
		var deliveries, calls atomic.Int32 // messages delivered; handler calls
		var mu sync.Mutex
		ids := map[string]bool{} // ce_id and Message.ID of each delivery
		count := func(next transport.Handler) transport.Handler {
			return func(ctx context.Context, m *transport.Message) error {
				mu.Lock()
				ids[m.Header[transport.HeaderID]+" / "+m.ID] = true
				mu.Unlock()
				err := next(ctx, m)
				deliveries.Add(1)
				return err
			}
		}
		_, err := bus.Subscribe(b, "billing", Handler(o, func(ctx context.Context, tx *sql.Tx, ev bus.Event[OrderPlaced]) error {
			calls.Add(1)
			_, err := tx.ExecContext(ctx, "INSERT INTO "+e.tbl("invoices")+" (order_id) VALUES ("+e.ph(1)+")", ev.Data.ID)
			return err
		}), bus.WithGroupMiddleware(count))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// The first relay "crashes" after its first publish: it never
		// deletes, and is gone (stopped during its long backoff).
		crashed := make(chan struct{})
		r1, err := NewRelay(o, tr, RelayOptions{MinBackoff: time.Hour, MaxBackoff: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		r1.afterPublish = func() error {
			once.Do(func() { close(crashed) })
			return errCrash
		}
		if err := r1.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			return Publish(ctx, o, tx, OrderPlaced{ID: "42"}, bus.WithKey("42"))
		}); err != nil {
			t.Fatal(err)
		}
		<-crashed
		waitFor(t, "the first delivery", 10*time.Second, func() bool { return deliveries.Load() >= 1 })
		if err := r1.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if n := e.count(t, e.table); n != 1 {
			t.Fatalf("after the crash %d rows in the outbox, want 1 (not deleted)", n)
		}
		// A new relay (another process) takes over and re-sends.
		startRelay(t, e.newOutbox(t, e.openDB(t), nil), tr, RelayOptions{})
		waitFor(t, "the re-send", 10*time.Second, func() bool { return deliveries.Load() >= 2 })
		waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
		// The handler ran for the first delivery only: the re-send found
		// the event in the inbox.
		if c := calls.Load(); c != 1 {
			t.Fatalf("handler ran %d times for 2 deliveries, want 1", c)
		}
		if n := e.count(t, e.tbl("invoices")); n != 1 {
			t.Fatalf("%d invoices after a re-send, want 1 (effect exactly once)", n)
		}
		if n := e.count(t, e.inbox); n != 1 {
			t.Fatalf("%d inbox rows, want 1", n)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(ids) != 1 {
			t.Fatalf("the re-send had another ce_id or Message.ID: %v", ids)
		}
	})
}

// flaky is a Publisher that fails with transport.ErrUnavailable while down,
// recording when it was called.
type flaky struct {
	next  transport.Publisher
	down  atomic.Bool
	mu    sync.Mutex
	calls []time.Time
}

func (f *flaky) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if f.down.Load() {
		f.mu.Lock()
		f.calls = append(f.calls, time.Now())
		f.mu.Unlock()
		return fmt.Errorf("%w: injected outage", transport.ErrUnavailable)
	}
	return f.next.Publish(ctx, topic, msgs...)
}

func (f *flaky) downCalls() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls...)
}

// TestOutage: while the transport is down the relay backs off (each pause
// at least double the one before, up to MaxBackoff), the rows stay, and
// everything drains when it returns.
func TestOutage(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		s := subscribe(t, b)
		f := &flaky{next: tr}
		f.down.Store(true)
		const minB, maxB = 10 * time.Millisecond, 80 * time.Millisecond
		r := startRelay(t, o, f, RelayOptions{MinBackoff: minB, MaxBackoff: maxB})
		for i := range 30 {
			if err := o.Transact(ctx, func(tx *sql.Tx) error {
				return Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(i)})
			}); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "6 failed rounds", 20*time.Second, func() bool { return len(f.downCalls()) >= 6 })
		if n, _, err := r.Pending(ctx); err != nil || n != 30 {
			t.Fatalf("during the outage: %d rows pending (err %v), want 30", n, err)
		}
		calls := f.downCalls()
		for i := 2; i < len(calls); i++ {
			// After the (i-1)-th failed round the relay paused at least
			// min(minB*2^(i-2), maxB). Wake-ups of new commits may start a
			// round early only before the first failure.
			want := min(minB<<(i-2), maxB)
			if gap := calls[i].Sub(calls[i-1]); gap < want {
				t.Fatalf("pause %d was %v, want at least %v (backoff)", i-1, gap, want)
			}
		}
		if r.Stats().Failed == 0 {
			t.Fatal("Stats.Failed is 0 during an outage")
		}
		f.down.Store(false)
		waitFor(t, "everything after the outage", 20*time.Second, func() bool { return s.distinct() == 30 })
		waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
	})
}

// rejecting fails a whole Publish call with ErrMessageTooLarge when one of
// its messages has a body containing "huge".
type rejecting struct{ next transport.Publisher }

func (p rejecting) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	for _, m := range msgs {
		if strings.Contains(string(m.Body), "huge") {
			return fmt.Errorf("%w: injected", transport.ErrMessageTooLarge)
		}
	}
	return p.next.Publish(ctx, topic, msgs...)
}

// TestPoisonRows: rows that can never be published (corrupt headers, an
// invalid topic, a message the transport rejects as too large) are moved
// to Table_dead and reported; the rows around them are delivered.
func TestPoisonRows(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		s := subscribe(t, b)
		var mu sync.Mutex
		var reported []Poison
		pub := func(id string) {
			t.Helper()
			if err := o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: id}, bus.WithKey("k")) }); err != nil {
				t.Fatal(err)
			}
		}
		raw := func(topic string, headers []byte) {
			t.Helper()
			_, err := e.db.Exec("INSERT INTO "+e.table+" (topic, msg_key, msg_id, headers, body, created_at) VALUES ("+
				e.ph(1)+", 'k', 'raw', "+e.ph(2)+", "+e.ph(3)+", 0)", topic, headers, []byte("{}"))
			if err != nil {
				t.Fatal(err)
			}
		}
		pub("a")
		raw("orders", []byte("not headers"))
		pub("b")
		raw("bad topic", encodeHeaders(map[string]string{}))
		pub("huge")
		pub("c")
		startRelay(t, o, rejecting{tr}, RelayOptions{OnPoison: func(_ context.Context, p Poison) {
			mu.Lock()
			reported = append(reported, p)
			mu.Unlock()
		}})
		waitFor(t, "the good events", 10*time.Second, func() bool { return s.distinct() == 3 })
		waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
		if n := e.count(t, e.table+"_dead"); n != 3 {
			t.Fatalf("%d rows in the dead table, want 3", n)
		}
		waitFor(t, "3 reports", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(reported) >= 3 })
		mu.Lock()
		defer mu.Unlock()
		if len(reported) != 3 {
			t.Fatalf("reported %d poison rows, want 3: %+v", len(reported), reported)
		}
		for _, p := range reported {
			t.Logf("poison: row %d topic %q: %v", p.RowID, p.Topic, p.Err)
		}
		var errText string
		if err := e.db.QueryRow("SELECT error FROM " + e.table + "_dead ORDER BY id DESC LIMIT 1").Scan(&errText); err != nil || !strings.Contains(errText, "too large") {
			t.Fatalf("dead row error %q (%v), want the transport's reason", errText, err)
		}
		for _, id := range []string{"a", "b", "c"} {
			if s.byIDCount(id) != 1 {
				t.Fatalf("event %s delivered %d times", id, s.byIDCount(id))
			}
		}
	})
}

func (s *sink) byIDCount(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

// TestRetention: with Retention, published rows are kept in
// Table_published, then deleted once older than Retention.
func TestRetention(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		var now atomic.Int64
		now.Store(time.Now().UnixMicro())
		o, err := New(e.db, Options{Dialect: e.dialect, Bus: b, Table: e.table, InboxTable: e.inbox,
			Now: func() time.Time { return time.UnixMicro(now.Load()) }})
		if err != nil {
			t.Fatal(err)
		}
		if err := o.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		s := subscribe(t, b)
		startRelay(t, o, tr, RelayOptions{Retention: time.Hour, PollInterval: 5 * time.Millisecond})
		for i := range 5 {
			if err := o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(i)}) }); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "5 events", 10*time.Second, func() bool { return s.distinct() == 5 })
		waitFor(t, "5 archived rows", 10*time.Second, func() bool { return e.count(t, e.table+"_published") == 5 })
		if n := e.count(t, e.table); n != 0 {
			t.Fatalf("%d rows still pending", n)
		}
		now.Add((2 * time.Hour).Microseconds())
		waitFor(t, "the archive to be pruned", 10*time.Second, func() bool { return e.count(t, e.table+"_published") == 0 })
	})
}

// failOne fails the message whose ID is id, once, inside a batch: the call
// returns a *transport.PublishError naming it and passes the other messages
// of the call on (as a broker that stored them would).
type failOne struct {
	next   transport.Publisher
	id     string
	failed atomic.Bool
}

func (f *failOne) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if f.failed.Load() {
		return f.next.Publish(ctx, topic, msgs...)
	}
	for i, m := range msgs {
		if m.ID != f.id {
			continue
		}
		f.failed.Store(true)
		rest := append(append([]*transport.Message(nil), msgs[:i]...), msgs[i+1:]...)
		if err := f.next.Publish(ctx, topic, rest...); err != nil {
			return err
		}
		return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: []transport.MessageError{
			{Index: i, ID: m.ID, Err: fmt.Errorf("%w: injected", transport.ErrUnavailable)}}}
	}
	return f.next.Publish(ctx, topic, msgs...)
}

// TestPartialBatchFailureKeepsKeyOrder: a batch in which the transport
// accepted every message but one: the failed row is published again and
// so is every later row of its key, after it and in order (the key's
// deliveries end in order); the rows of other keys are published once.
// Before, the later rows were deleted and the failed row came last.
func TestPartialBatchFailureKeepsKeyOrder(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		var mu sync.Mutex
		seqs := map[string][]int{}
		if _, err := bus.Subscribe(b, "billing", func(_ context.Context, ev bus.Event[OrderPlaced]) error {
			mu.Lock()
			seqs[ev.Data.Key] = append(seqs[ev.Data.Key], ev.Data.Seq)
			mu.Unlock()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		const n = 10
		var failID string
		// One transaction, so that one batch holds every row: keys k and j
		// interleaved.
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			for i := range n {
				for _, key := range []string{"k", "j"} {
					if err := Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(key, i), Key: key, Seq: i}, bus.WithKey(key)); err != nil {
						return err
					}
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// The Message.ID of k's row 3.
		if err := e.db.QueryRow("SELECT msg_id FROM " + e.table + " ORDER BY id LIMIT 1 OFFSET 6").Scan(&failID); err != nil {
			t.Fatal(err)
		}
		f := &failOne{next: tr, id: failID}
		r := startRelay(t, o, f, RelayOptions{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
		waitFor(t, "the outbox to empty", 20*time.Second, func() bool { return e.count(t, e.table) == 0 })
		// A last event of each key: once it is handled, all before it were
		// (chanbus keeps key order).
		for _, key := range []string{"k", "j"} {
			if err := o.Transact(ctx, func(tx *sql.Tx) error {
				return Publish(ctx, o, tx, OrderPlaced{ID: key + "-end", Key: key, Seq: -1}, bus.WithKey(key))
			}); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "the last events", 20*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			k, j := seqs["k"], seqs["j"]
			return len(k) > 0 && k[len(k)-1] == -1 && len(j) > 0 && j[len(j)-1] == -1
		})
		if !f.failed.Load() {
			t.Fatal("the injected failure did not happen")
		}
		mu.Lock()
		defer mu.Unlock()
		k, j := seqs["k"][:len(seqs["k"])-1], seqs["j"][:len(seqs["j"])-1]
		last3 := -1
		for i, s := range k {
			if s == 3 {
				last3 = i
			}
		}
		want := []int{3, 4, 5, 6, 7, 8, 9}
		if last3 < 0 || fmt.Sprint(k[last3:]) != fmt.Sprint(want) {
			t.Fatalf("key k delivered %v: after the failed row 3 the key's later rows must follow in order, want the deliveries to end with %v", k, want)
		}
		if fmt.Sprint(j) != fmt.Sprint([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
			t.Fatalf("key j (no failure) delivered %v, want each row once in order", j)
		}
		if st := r.Stats(); st.Failed != 1 {
			t.Fatalf("Stats.Failed %d, want 1", st.Failed)
		}
	})
}

// TestSQLiteRelaysOfTwoProcesses: two relays on one SQLite file, each with
// its own *sql.DB and Outbox (two processes): the lease lets one lead at a
// time; every event is delivered once in key order, also when the leader
// stops midway and the other takes over.
func TestSQLiteRelaysOfTwoProcesses(t *testing.T) {
	e := newSQLite(t)
	b, tr := newBus(t)
	c := &orderChecker{}
	if _, err := bus.Subscribe(b, "billing", c.handle, bus.WithConcurrency(8)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	writer := e.newOutbox(t, e.db, b)
	o1 := e.newOutbox(t, e.openDB(t), nil)
	o2 := e.newOutbox(t, e.openDB(t), nil)
	opts := RelayOptions{BatchSize: 50, PollInterval: 10 * time.Millisecond}
	r1, err := NewRelay(o1, tr, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer r1.Stop(context.Background())
	r2 := startRelay(t, o2, tr, opts)
	const keys, perKey = 20, 100
	done := make(chan struct{})
	go func() { defer close(done); writeKeyed(t, writer, keys, perKey, 10) }()
	waitFor(t, "500 events", 60*time.Second, func() bool { return c.distinct() >= 500 })
	if r1.Stats().Leader && r2.Stats().Leader {
		t.Fatal("both relays lead")
	}
	first, second := r1, r2
	if r2.Stats().Leader {
		first, second = r2, r1
	}
	if err := first.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other relay to take the lead", 30*time.Second, func() bool { return second.Stats().Leader })
	<-done
	waitFor(t, "every event", 120*time.Second, func() bool { return c.distinct() >= keys*perKey })
	waitFor(t, "the outbox to empty", 10*time.Second, func() bool { return e.count(t, e.table) == 0 })
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.errs) > 0 {
		t.Fatalf("per-key order broken: %v", c.errs)
	}
	if c.total != keys*perKey {
		t.Fatalf("%d deliveries of %d events: published twice without a crash", c.total, keys*perKey)
	}
	if first.Stats().Published == 0 || second.Stats().Published == 0 {
		t.Fatalf("published: first %d, second %d: no failover", first.Stats().Published, second.Stats().Published)
	}
}

// TestSQLiteLease: a relay does not lead while another process's lease is
// valid, takes over once it expired (a crashed leader never frees it), and
// steps down before its next round when its lease was taken from it.
func TestSQLiteLease(t *testing.T) {
	e := newSQLite(t)
	ctx := context.Background()
	b, tr := newBus(t)
	o := e.newOutbox(t, e.db, b)
	s := subscribe(t, b)
	lease := e.table + "_lease"
	// A crashed process's lease, valid for another 500ms.
	expiry := time.Now().Add(500 * time.Millisecond)
	if _, err := e.db.Exec("INSERT INTO "+lease+" (name, owner, expires_at) VALUES ('relay', 'crashed', ?)", expiry.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: "1"}) }); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, o, tr, RelayOptions{PollInterval: 10 * time.Millisecond, LeaseTTL: 300 * time.Millisecond})
	waitFor(t, "the first event", 20*time.Second, func() bool { return s.distinct() == 1 })
	if time.Now().Before(expiry) {
		t.Fatal("the relay published while another process's lease was valid")
	}
	if !r.Stats().Leader {
		t.Fatal("the relay does not lead after the lease expired")
	}
	// Another process takes the lease (as if this relay had stalled past
	// LeaseTTL): the relay steps down and publishes nothing more.
	if _, err := e.db.Exec("UPDATE "+lease+" SET owner = 'thief', expires_at = ?", time.Now().Add(time.Hour).UnixMicro()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the relay to step down", 20*time.Second, func() bool { return !r.Stats().Leader })
	if err := o.Transact(ctx, func(tx *sql.Tx) error { return Publish(ctx, o, tx, OrderPlaced{ID: "2"}) }); err != nil {
		t.Fatal(err)
	}
	// It tries again every PollInterval: give it many chances.
	rounds := r.Stats().Rounds
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		if r.Stats().Leader || s.distinct() != 1 {
			t.Fatal("the relay led or published while the lease was another's")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r.Stats().Rounds != rounds {
		t.Fatal("the relay ran rounds without the lease")
	}
	if _, err := e.db.Exec("UPDATE " + lease + " SET expires_at = 0"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second event after the lease was freed", 20*time.Second, func() bool { return s.distinct() == 2 })
}

// hugeAndFlaky refuses a whole call with ErrMessageTooLarge when one of its
// messages has "huge" in its body (as a broker that checks a batch up
// front), and fails the message whose ID is flaky once with ErrUnavailable
// when it comes alone.
type hugeAndFlaky struct {
	next   transport.Publisher
	flaky  string
	failed atomic.Bool
}

func (p *hugeAndFlaky) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	for _, m := range msgs {
		if strings.Contains(string(m.Body), "huge") {
			return fmt.Errorf("%w: injected", transport.ErrMessageTooLarge)
		}
	}
	if len(msgs) == 1 && msgs[0].ID == p.flaky && !p.failed.Swap(true) {
		return fmt.Errorf("%w: injected", transport.ErrUnavailable)
	}
	return p.next.Publish(ctx, topic, msgs...)
}

// TestOneAtATimeStopsAKeyAtItsFailure: when a call fails for a poison
// message, the relay sends the batch one message at a time; a message that
// then fails for a passing reason stops its key for the round (its later
// messages are not sent before it), so the key is delivered exactly in
// order, each event once, and the poison row is moved aside.
func TestOneAtATimeStopsAKeyAtItsFailure(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		c := &orderChecker{}
		if _, err := bus.Subscribe(b, "billing", c.handle); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		const n = 6
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			if err := Publish(ctx, o, tx, OrderPlaced{ID: "huge", Key: "other"}, bus.WithKey("other")); err != nil {
				return err
			}
			for i := range n {
				if err := Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint("k", i), Key: "k", Seq: i}, bus.WithKey("k")); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		var flaky string // k's row 2
		if err := e.db.QueryRow("SELECT msg_id FROM " + e.table + " ORDER BY id LIMIT 1 OFFSET 3").Scan(&flaky); err != nil {
			t.Fatal(err)
		}
		p := &hugeAndFlaky{next: tr, flaky: flaky}
		startRelay(t, o, p, RelayOptions{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
		waitFor(t, "every event", 20*time.Second, func() bool { return c.distinct() == n })
		waitFor(t, "the outbox to empty", 20*time.Second, func() bool { return e.count(t, e.table) == 0 })
		if !p.failed.Load() {
			t.Fatal("the injected failure did not happen")
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.errs) > 0 || c.total != n {
			t.Fatalf("key k: %d deliveries of %d events, order errors %v: later messages were sent before the failed one", c.total, n, c.errs)
		}
		if d := e.count(t, e.table+"_dead"); d != 1 {
			t.Fatalf("%d rows in the dead table, want 1 (the huge one)", d)
		}
	})
}

func TestPGRanges(t *testing.T) {
	for _, c := range []struct {
		ids    []int64
		lo, hi string
	}{
		{nil, "{}", "{}"},
		{[]int64{4}, "{4}", "{4}"},
		{[]int64{3, 1, 2, 5, 9, 8, 7, 11}, "{1,5,7,11}", "{3,5,9,11}"},
		{[]int64{-2, -1, 0, 1}, "{-2}", "{1}"},
	} {
		if lo, hi := pgRanges(c.ids); lo != c.lo || hi != c.hi {
			t.Errorf("pgRanges(%v) = %s, %s; want %s, %s", c.ids, lo, hi, c.lo, c.hi)
		}
	}
}

// recorder passes messages on and records, per key, the Seq of each
// message the next publisher accepted, in order.
type recorder struct {
	next transport.Publisher
	mu   sync.Mutex
	seqs map[string][]int
	ids  map[string]bool // every accepted Message.ID
}

func (p *recorder) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	err := p.next.Publish(ctx, topic, msgs...)
	failed := map[int]bool{}
	var pe *transport.PublishError
	switch {
	case errors.As(err, &pe):
		for _, f := range pe.Failures {
			failed[f.Index] = true
		}
	case err != nil:
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, m := range msgs {
		if failed[i] {
			continue
		}
		var ev OrderPlaced
		if jerr := json.Unmarshal(m.Body, &ev); jerr != nil {
			return jerr
		}
		p.seqs[m.Key] = append(p.seqs[m.Key], ev.Seq)
		p.ids[m.ID] = true
	}
	return err
}

// TestBacklogReadAhead: a backlog of 120 rows (3 keys, one row a
// transaction) relayed with BatchSize 10, so that the relay reads the
// rest of the backlog ahead in one statement and publishes it
// one batch a round; one message of key b in a batch read ahead fails
// once. Every row is delivered, each key in order (key b's rows from the
// failed one on again, in order, after it), and after each publish no
// more than one batch of accepted rows is still in the table (what a
// crash would re-send).
func TestBacklogReadAhead(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		const perKey, batch, failSeq = 40, 10, 25
		keys := []string{"a", "b", "c"}
		for i := range perKey {
			for _, key := range keys {
				if err := o.Transact(ctx, func(tx *sql.Tx) error {
					return Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(key, i), Key: key, Seq: i}, bus.WithKey(key))
				}); err != nil {
					t.Fatal(err)
				}
			}
		}
		var failID string
		if err := e.db.QueryRow("SELECT msg_id FROM " + e.table + " ORDER BY id LIMIT 1 OFFSET " + fmt.Sprint(failSeq*len(keys)+1)).Scan(&failID); err != nil {
			t.Fatal(err)
		}
		rec := &recorder{next: tr, seqs: map[string][]int{}, ids: map[string]bool{}}
		f := &failOne{next: rec, id: failID}
		r, err := NewRelay(o, f, RelayOptions{BatchSize: batch, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		var unsent atomic.Int64 // most accepted rows still in the table after a publish
		r.afterPublish = func() error {
			rs, err := e.db.Query("SELECT msg_id FROM " + e.table)
			if err != nil {
				return err
			}
			defer rs.Close()
			rec.mu.Lock()
			defer rec.mu.Unlock()
			var n int64
			for rs.Next() {
				var id string
				if err := rs.Scan(&id); err != nil {
					return err
				}
				if rec.ids[id] {
					n++
				}
			}
			if n > unsent.Load() {
				unsent.Store(n)
			}
			return rs.Err()
		}
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer r.Stop(ctx)
		waitFor(t, "the outbox to empty", 20*time.Second, func() bool { return e.count(t, e.table) == 0 })
		if !f.failed.Load() {
			t.Fatal("the injected failure did not happen")
		}
		if n := unsent.Load(); n > batch {
			t.Errorf("%d accepted rows were still in the table after a publish, want at most one batch (%d)", n, batch)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, key := range keys {
			got := rec.seqs[key]
			// The deliveries end with the key's rows in order from the
			// last delivery of the failed row (key b) or of row 0.
			from := 0
			if key == "b" {
				from = failSeq
			}
			last := -1
			for i, s := range got {
				if s == from {
					last = i
				}
			}
			var want []int
			for s := from; s < perKey; s++ {
				want = append(want, s)
			}
			if last < 0 || fmt.Sprint(got[last:]) != fmt.Sprint(want) {
				t.Errorf("key %s delivered %v, want it to end with %v", key, got, want)
			}
			if key != "b" && len(got) != perKey {
				t.Errorf("key %s (no failure) delivered %d rows, want each of %d once", key, len(got), perKey)
			}
			seen := map[int]bool{}
			for _, s := range got {
				seen[s] = true
			}
			if len(seen) != perKey {
				t.Errorf("key %s: %d of %d rows delivered", key, len(seen), perKey)
			}
		}
	})
}

// gate holds the first Publish until Open, and reports on held that it is
// holding it.
type gate struct {
	next           transport.Publisher
	held, open     chan struct{}
	once, openOnce sync.Once
}

// Open lets the held Publish (and every later one) through.
func (g *gate) Open() { g.openOnce.Do(func() { close(g.open) }) }

func (g *gate) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	g.once.Do(func() {
		close(g.held)
		<-g.open
	})
	return g.next.Publish(ctx, topic, msgs...)
}

// TestCommitsDuringReadAhead: rows committed while the relay publishes a
// full batch, and reads the next ones ahead meanwhile, are delivered too,
// each key in order, each row once: the read-ahead reads what committed
// before it (on SQLite, the rows above the batch's highest id), and the
// round after the rows read ahead reads the rest from the oldest.
func TestCommitsDuringReadAhead(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		b, tr := newBus(t)
		o := e.newOutbox(t, e.db, b)
		const batch, before, during = 10, 25, 40
		keys := []string{"a", "b", "c"}
		seq := map[string]int{}
		commit := func(n int) {
			for i := range n {
				key := keys[i%len(keys)]
				if err := o.Transact(ctx, func(tx *sql.Tx) error {
					return Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(key, seq[key]), Key: key, Seq: seq[key]}, bus.WithKey(key))
				}); err != nil {
					t.Fatal(err)
				}
				seq[key]++
			}
		}
		commit(before)
		rec := &recorder{next: tr, seqs: map[string][]int{}, ids: map[string]bool{}}
		g := &gate{next: rec, held: make(chan struct{}), open: make(chan struct{})}
		r, err := NewRelay(o, g, RelayOptions{BatchSize: batch})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer r.Stop(ctx)
		defer g.Open() // before Stop, which waits for the round in flight
		<-g.held       // the first batch is being published
		commit(during)
		g.Open()
		waitFor(t, "the outbox to empty", 20*time.Second, func() bool { return e.count(t, e.table) == 0 })
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, key := range keys {
			var want []int
			for s := range seq[key] {
				want = append(want, s)
			}
			if got := rec.seqs[key]; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("key %s delivered %v, want %v", key, got, want)
			}
		}
	})
}

func TestStreamSpacing(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		c    time.Duration
		n    int
		iv   time.Duration
		want time.Duration
	}{
		{ms, 1, 2 * ms, ms},    // 500/s: Coalesce
		{ms, 1, time.Hour, ms}, // after an idle spell
		{ms, 2, ms, 2 * ms},    // 2,000/s
		{ms, 10, 4 * ms, 2500 * time.Microsecond},
		{ms, 24, 4 * ms, 6 * ms},  // 6,000/s
		{ms, 100, 4 * ms, 8 * ms}, // 25,000/s: at most 8 x
		{ms, 5, 0, 8 * ms},
		{0, 100, ms, 0}, // Coalesce off
		{10 * ms, 3, 10 * ms, 30 * ms},
	} {
		if got := streamSpacing(c.c, c.n, c.iv); got != c.want {
			t.Errorf("streamSpacing(%v, %d, %v) = %v, want %v", c.c, c.n, c.iv, got, c.want)
		}
	}
}

// TestRelayVacuums (PostgreSQL): once VacuumEvery rows were published the
// relay VACUUMs the outbox table itself, so that the rounds, which read the
// table from its first index entry, do not walk the entries of every row
// deleted since autovacuum's last visit (up to autovacuum_naptime).
// pg_stat_user_tables.vacuum_count counts VACUUMs that are not
// autovacuum's; it stays 0 with VacuumEvery negative.
func TestRelayVacuums(t *testing.T) {
	e := needPostgres(t)
	ctx := context.Background()
	vacuums := func(table string) int64 {
		var n int64
		err := e.db.QueryRow("SELECT COALESCE(sum(vacuum_count), 0) FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
			e.schema, table).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	run := func(t *testing.T, table string, every int) {
		b, tr := newBus(t)
		o, err := New(e.db, Options{Dialect: e.dialect, Bus: b, Table: e.schema + "." + table, InboxTable: e.schema + "." + table + "_inbox"})
		if err != nil {
			t.Fatal(err)
		}
		if err := o.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Close() })
		s := subscribe(t, b)
		startRelay(t, o, tr, RelayOptions{VacuumEvery: every})
		for i := range 30 {
			err := o.Transact(ctx, func(tx *sql.Tx) error {
				for j := range 10 {
					if err := Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(i*10 + j)}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "300 events", 10*time.Second, func() bool { return s.distinct() == 300 })
	}
	t.Run("every=100", func(t *testing.T) {
		run(t, "vacuumed", 100)
		waitFor(t, "a VACUUM of the outbox table", 10*time.Second, func() bool { return vacuums("vacuumed") > 0 })
	})
	t.Run("never", func(t *testing.T) {
		run(t, "unvacuumed", -1)
		if n := vacuums("unvacuumed"); n != 0 {
			t.Fatalf("vacuum_count = %d with VacuumEvery -1, want 0", n)
		}
	})
}

// TestStopFreesLease (SQLite): a relay stopped at any point, even while it
// takes the lease, leaves the lease free, so that another process's relay
// takes over at once rather than after LeaseTTL (it used to stay held
// after 22 to 92 of 300 stops: Stop cancelled a take that had succeeded).
func TestStopFreesLease(t *testing.T) {
	e := newSQLite(t)
	b, tr := newBus(t)
	o := e.newOutbox(t, e.db, b)
	ctx := context.Background()
	const stops = 300
	held := 0
	for i := range stops {
		r, err := NewRelay(o, tr, RelayOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i%7) * 50 * time.Microsecond) // stop at different points
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		var expires int64
		err = e.db.QueryRow("SELECT expires_at FROM " + o.q.lease + " WHERE name = 'relay'").Scan(&expires)
		if err == nil && expires > time.Now().UnixMicro() {
			held++
			if _, err := e.db.Exec("UPDATE " + o.q.lease + " SET expires_at = 0"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if held > 0 {
		t.Fatalf("%d of %d stopped relays left the lease held", held, stops)
	}
}
