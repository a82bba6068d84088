package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// Benchmarks (PostgreSQL ones need BUS_TEST_POSTGRES_DSN). Each reports
// events/s, and beside it the reference measured in the same call (one
// right after the other, so that both see the same load on a shared
// machine) and the ratio:
//
//	go test -run '^$' -bench . -benchtime 20000x ./outbox/
//
// b.N is the number of events; b.ResetTimer is not used (each part times
// itself), so ns/op includes the untimed set-up.

func benchPG(b *testing.B) *env {
	if pgDSN() == "" {
		b.Skip("BUS_TEST_POSTGRES_DSN unset")
	}
	return newPostgres(b)
}

// counter counts delivered events on a chanbus bus and records latency
// from the event's time (set at Publish) when lat is set.
type counter struct {
	n   atomic.Int64
	mu  sync.Mutex
	lat []time.Duration
	rec bool
	// handled[seq] is when event seq was handled (UnixNano), when set.
	handled []atomic.Int64
}

func (c *counter) handle(_ context.Context, e bus.Event[OrderPlaced]) error {
	if c.rec {
		d := time.Since(e.Time)
		c.mu.Lock()
		c.lat = append(c.lat, d)
		c.mu.Unlock()
	}
	if e.Data.Seq < len(c.handled) {
		c.handled[e.Data.Seq].Store(time.Now().UnixNano())
	}
	c.n.Add(1)
	return nil
}

func benchBus(b *testing.B) (*bus.Bus, *chanbus.Transport, *counter) {
	bb, tr := newBus(b)
	c := &counter{}
	if _, err := bus.Subscribe(bb, "billing", c.handle, bus.WithConcurrency(4)); err != nil {
		b.Fatal(err)
	}
	if err := bb.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	return bb, tr, c
}

func waitCount(b *testing.B, c *counter, n int64) {
	deadline := time.Now().Add(10 * time.Minute)
	for c.n.Load() < n {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", c.n.Load(), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func reportRate(b *testing.B, n int, d time.Duration) {
	b.ReportMetric(float64(n)/d.Seconds(), "events/s")
}

// writers runs 4 writers, each committing transactions of txSize calls of
// write, until events from to to (exclusive) were written.
func writers(b *testing.B, db *sql.DB, from, to, txSize int, write func(tx *sql.Tx, i int) error, commit func(*sql.Tx) error) {
	next := atomic.Int64{}
	next.Store(int64(from))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				start := int(next.Add(int64(txSize))) - txSize
				if start >= to {
					return
				}
				tx, err := db.Begin()
				if err != nil {
					b.Error(err)
					return
				}
				for i := start; i < min(start+txSize, to); i++ {
					if err := write(tx, i); err != nil {
						tx.Rollback()
						b.Error(err)
						return
					}
				}
				if err := commit(tx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkPGWriters: 4 writers publishing through the outbox while a relay
// delivers to chanbus (events/s: until the last event was delivered),
// beside, in the same call, raw-events/s: the same 4 writers inserting the
// same rows into the table without a relay (the rows Publish writes, built
// before the clock runs), and publish-only-events/s: the
// writers calling Publish without a relay. relay/raw is the ratio (target
// >= 0.9).
//
// The three take turns, a quarter of the events at a time (each turn in
// another order), so that a shared machine's load, which changes from one
// second to the next, weighs on each of them alike; each one's rate is its
// events over the sum of its turns.
func BenchmarkPGWriters(b *testing.B) {
	for _, txSize := range []int{1, 10} {
		b.Run(fmt.Sprintf("tx=%d", txSize), func(b *testing.B) {
			relayPhase, r := writersRelay(b, txSize)
			phases := []writerPhase{writersRaw(b, txSize), writersPublishOnly(b, txSize), relayPhase}
			elapsed := make([]time.Duration, len(phases))
			const turns = 4
			for t := range turns {
				from, to := t*b.N/turns, (t+1)*b.N/turns
				for k := range phases {
					p := (t + k) % len(phases)
					start := time.Now()
					phases[p](from, to)
					elapsed[p] += time.Since(start)
				}
			}
			rate := func(p int) float64 { return float64(b.N) / elapsed[p].Seconds() }
			raw, only, relay := rate(0), rate(1), rate(2)
			b.ReportMetric(raw, "raw-events/s")
			b.ReportMetric(only, "publish-only-events/s")
			b.ReportMetric(relay, "events/s")
			b.ReportMetric(relay/raw, "relay/raw")
			if st := r.Stats(); st.Rounds > 0 {
				b.ReportMetric(float64(st.Published)/float64(st.Rounds), "rows/round")
			}
		})
	}
}

// A writerPhase writes events from to to (exclusive), and returns once
// they are written (and, with a relay, delivered).
type writerPhase func(from, to int)

func writersRaw(b *testing.B, txSize int) writerPhase {
	e := benchPG(b)
	o := e.newOutbox(b, e.db, nil)
	// The rows Publish writes for these events (the same ID, header and
	// body sizes), built before the clock runs.
	bb, _ := newBus(b)
	type rowArgs struct {
		topic, key, id string
		headers, body  []byte
	}
	rows := make([]rowArgs, b.N)
	for i := range rows {
		topic, m, err := bus.NewMessage(bb, OrderPlaced{ID: "123456", Key: "k", Seq: i}, bus.WithKey(fmt.Sprint(i%50)))
		if err != nil {
			b.Fatal(err)
		}
		rows[i] = rowArgs{topic, m.Key, m.ID, encodeHeaders(m.Header), m.Body}
	}
	return func(from, to int) {
		writers(b, e.db, from, to, txSize, func(tx *sql.Tx, i int) error {
			r := &rows[i]
			_, err := tx.Exec(o.q.insert, r.topic, r.key, r.id, r.headers, r.body, int64(i))
			return err
		}, (*sql.Tx).Commit)
	}
}

func writersPublishOnly(b *testing.B, txSize int) writerPhase {
	e := benchPG(b)
	bb, _ := newBus(b)
	o := e.newOutbox(b, e.db, bb)
	ctx := context.Background()
	return func(from, to int) {
		writers(b, e.db, from, to, txSize, func(tx *sql.Tx, i int) error {
			return Publish(ctx, o, tx, OrderPlaced{ID: "123456", Key: "k", Seq: i}, bus.WithKey(fmt.Sprint(i%50)))
		}, (*sql.Tx).Commit)
	}
}

// writersRelay also returns the relay (its Stats: rows per round).
func writersRelay(b *testing.B, txSize int) (writerPhase, *Relay) {
	e := benchPG(b)
	bb, tr, c := benchBus(b)
	o := e.newOutbox(b, e.db, bb)
	r := startRelay(b, o, tr, RelayOptions{})
	ctx := context.Background()
	return func(from, to int) {
		writers(b, e.db, from, to, txSize, func(tx *sql.Tx, i int) error {
			return Publish(ctx, o, tx, OrderPlaced{ID: "123456", Key: "k", Seq: i}, bus.WithKey(fmt.Sprint(i%50)))
		}, o.Commit)
		waitCount(b, c, int64(to))
	}, r
}

// fillBacklog writes n events into the outbox, untimed: through Publish,
// in transactions of 1,000 events; on PostgreSQL only the first 1,000, the
// rest copied from them by one INSERT ... SELECT (each copy with its own
// msg_id, the keys and rows as Publish wrote them), since Publish's round
// trip per event made a 200,000-row backlog take half a minute to write.
func fillBacklog(b testing.TB, o *Outbox, n int) {
	b.Helper()
	ctx := context.Background()
	published := n
	if o.dialect == PostgreSQL {
		published = min(n, 1000)
	}
	for i := 0; i < published; i += 1000 {
		err := o.Transact(ctx, func(tx *sql.Tx) error {
			for j := i; j < min(i+1000, published); j++ {
				if err := Publish(ctx, o, tx, OrderPlaced{ID: "123456", Key: "k", Seq: j}, bus.WithKey(fmt.Sprint(j%50))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	if copies := n - published; copies > 0 {
		q := fmt.Sprintf(`INSERT INTO %[1]s (topic, msg_key, msg_id, headers, body, created_at)
			SELECT p.topic, p.msg_key, p.msg_id || '-' || g, p.headers, p.body, p.created_at
			FROM generate_series(1, $1::int) AS g
			JOIN (SELECT *, row_number() OVER (ORDER BY id) - 1 AS k FROM %[1]s) AS p ON p.k = g %% $2
			ORDER BY g`, o.q.table)
		if _, err := o.db.ExecContext(ctx, q, copies, published); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPGDrain: a backlog of b.N rows drained to chanbus by the relay
// (events/s), beside, in the same call, raw-events/s: selecting and
// deleting the same rows in batches of the same size (500), publishing
// nowhere. relay/raw is the ratio.
func BenchmarkPGDrain(b *testing.B) {
	raw := func() float64 {
		e := benchPG(b)
		bb, _ := newBus(b)
		o := e.newOutbox(b, e.db, bb)
		fillBacklog(b, o, b.N)
		start := time.Now()
		ctx := context.Background()
		for done := 0; done < b.N; {
			n, err := rawRound(ctx, o, 500)
			if err != nil {
				b.Fatal(err)
			}
			done += n
		}
		return float64(b.N) / time.Since(start).Seconds()
	}()
	e := benchPG(b)
	bb, tr, c := benchBus(b)
	o := e.newOutbox(b, e.db, bb)
	fillBacklog(b, o, b.N)
	start := time.Now()
	startRelay(b, o, tr, RelayOptions{})
	waitCount(b, c, int64(b.N))
	relay := float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(raw, "raw-events/s")
	b.ReportMetric(relay, "events/s")
	b.ReportMetric(relay/raw, "relay/raw")
}

// rawRound selects and deletes one batch, decoding nothing.
func rawRound(ctx context.Context, o *Outbox, size int) (int, error) {
	rs, err := o.db.QueryContext(ctx, o.q.selectBatch, size)
	if err != nil {
		return 0, err
	}
	var ids []int64
	for rs.Next() {
		var id int64
		var topic, key, mid string
		var headers, body []byte
		if err := rs.Scan(&id, &topic, &key, &mid, &headers, &body); err != nil {
			rs.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rs.Close()
	if len(ids) > 0 {
		if _, err := o.db.ExecContext(ctx, fmt.Sprintf(o.q.deleteIn, idList(ids))); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// BenchmarkSQLiteDrain: the same on SQLite (WAL, one file).
func BenchmarkSQLiteDrain(b *testing.B) {
	e := newSQLite(b)
	bb, tr, c := benchBus(b)
	o := e.newOutbox(b, e.db, bb)
	fillBacklog(b, o, b.N)
	b.ResetTimer()
	start := time.Now()
	startRelay(b, o, tr, RelayOptions{})
	waitCount(b, c, int64(b.N))
	reportRate(b, b.N, time.Since(start))
}

// BenchmarkPGLatency: commit-to-handler latency at 500 events/s, one event
// per transaction: woken (Commit wakes the local relay) against polling
// (tx.Commit without a wake; the relay polls every 100 ms). Reports p50
// and p99 in ms from the return of the writer's commit to the start of the
// handler (0 when the handler started first), and publish-p50-ms: from
// Publish, before the commit, to the handler; b.N is the number of events
// (at 500/s).
func BenchmarkPGLatency(b *testing.B) {
	for _, mode := range []string{"Wake", "Poll100ms"} {
		b.Run(mode, func(b *testing.B) {
			e := benchPG(b)
			bb, tr, c := benchBus(b)
			c.rec = true
			c.handled = make([]atomic.Int64, b.N)
			o := e.newOutbox(b, e.db, bb)
			startRelay(b, o, tr, RelayOptions{PollInterval: 100 * time.Millisecond})
			ctx := context.Background()
			commit := o.Commit
			if mode != "Wake" {
				commit = (*sql.Tx).Commit
			}
			committed := make([]int64, b.N)
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			b.ResetTimer()
			for i := range b.N {
				<-tick.C
				tx, err := e.db.Begin()
				if err != nil {
					b.Fatal(err)
				}
				if err := Publish(ctx, o, tx, OrderPlaced{ID: "1", Seq: i}, bus.WithTime(time.Now())); err != nil {
					b.Fatal(err)
				}
				if err := commit(tx); err != nil {
					b.Fatal(err)
				}
				committed[i] = time.Now().UnixNano()
			}
			waitCount(b, c, int64(b.N))
			b.StopTimer()
			lat := make([]time.Duration, b.N)
			for i := range lat {
				lat[i] = max(0, time.Duration(c.handled[i].Load()-committed[i]))
			}
			slices.Sort(lat)
			c.mu.Lock()
			pub := slices.Clone(c.lat)
			c.mu.Unlock()
			slices.Sort(pub)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(pub[len(pub)/2].Microseconds())/1000, "publish-p50-ms")
		})
	}
}

var _ transport.Publisher = (*chanbus.Transport)(nil)
