package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busway/busway/internal/crashtest"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/kafka"
)

// crashBatch is the relay's BatchSize in TestRelayCrash: a kill between a
// batch's publish and its delete re-sends at most that many rows.
const crashBatch = 200

func crashKafka(brokers []string) kafka.Config {
	return kafka.Config{Brokers: brokers, Topics: kafka.Provisioning{Partitions: 3}, DialTimeout: 3 * time.Second,
		CommitInterval: 100 * time.Millisecond, SessionTimeout: 3 * time.Second, HeartbeatInterval: 100 * time.Millisecond,
		RebalanceTimeout: 5 * time.Second, DrainTimeout: 3 * time.Second, FetchMaxWait: 100 * time.Millisecond}
}

// TestRelayCrash: 20,000 outbox rows over 100 keys, relayed to Kafka (kfake
// in this process) by relay processes killed with SIGKILL three times at
// random points, a fresh relay each time; SQLite file, and PostgreSQL when
// BUS_TEST_POSTGRES_DSN is set. Every row reaches the consumer; a kill
// re-sends at most one batch (BatchSize); no message reaches the consumer
// before an earlier one of its key (a re-send repeats a suffix of a key,
// in order). The log has the figures.
func TestRelayCrash(t *testing.T) {
	if spec, ok := crashtest.ChildSpec(); ok {
		relayChild(spec)
		return
	}
	if testing.Short() {
		t.Skip("starts relay processes")
	}
	forEach(t, func(t *testing.T, e *env) {
		const n, keys, kills = 20000, 100, 3
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		o := e.newOutbox(t, e.db, nil)
		topic := fmt.Sprintf("relay-crash-%d", time.Now().UnixNano())
		for i := 0; i < n; i += 1000 {
			msgs := make([]*transport.Message, 0, 1000)
			for j := i; j < min(n, i+1000); j++ {
				msgs = append(msgs, crashtest.Message(j, keys))
			}
			if err := o.Transact(ctx, func(tx *sql.Tx) error { return o.PublishMessage(ctx, tx, topic, msgs...) }); err != nil {
				t.Fatal(err)
			}
		}
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3), kfake.GroupMinSessionTimeout(500*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tr, err := kafka.New(ctx, crashKafka(c.ListenAddrs()))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()

		run := crashtest.Run{N: n, Keys: keys, Kills: kills}
		rec := run.Start()
		sub, err := tr.Subscribe(ctx, topic, func(_ context.Context, m *transport.Message) error {
			key, seq, ok := crashtest.Parse(m)
			if !ok {
				return transport.Permanent(fmt.Errorf("message %q without its sequence", m.ID))
			}
			rec.Handled(m.ID, key, seq)
			return nil
		}, transport.SubscribeOptions{Group: "crash-consumer", StartFrom: transport.StartEarliest})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close(context.Background())
		where := e.path
		if e.dialect == PostgreSQL {
			where = e.dsn
		}
		dialect := "sqlite"
		if e.dialect == PostgreSQL {
			dialect = "postgres"
		}
		spec := strings.Join([]string{dialect, where, e.table, strings.Join(c.ListenAddrs(), ",")}, "|")
		run.Child = func(int) *exec.Cmd { return crashtest.Command(t, spec) }
		run.Settled = func() bool {
			var left int
			return e.db.QueryRow("SELECT COUNT(*) FROM "+e.table).Scan(&left) == nil && left == 0
		}
		rep := run.Do(t)
		rep.Log(t, crashBatch, fmt.Sprintf("the relay's BatchSize %d", crashBatch))
		rep.Check(t, crashBatch)
		if rep.Overtakes != 0 || rep.Late != 0 {
			t.Errorf("%d messages reached the consumer before an earlier one of their key", rep.Overtakes)
		}
		if left := e.count(t, e.table); left != 0 {
			t.Errorf("%d rows left in the outbox", left)
		}
	})
}

// relayChild runs a relay of spec's "dialect|path or DSN|table|brokers"
// until it is killed.
func relayChild(spec string) {
	p := strings.Split(spec, "|")
	fail := func(what string, err error) {
		fmt.Fprintln(os.Stderr, "relay child:", what+":", err)
		os.Exit(3)
	}
	driver, dsn, dialect := "sqlite", sqliteDSN(p[1]), SQLite
	if p[0] == "postgres" {
		driver, dsn, dialect = "pgx", p[1], PostgreSQL
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		fail("open", err)
	}
	o, err := New(db, Options{Dialect: dialect, Table: p[2]})
	if err != nil {
		fail("outbox", err)
	}
	tr, err := kafka.New(context.Background(), crashKafka(strings.Split(p[3], ",")))
	if err != nil {
		fail("kafka", err)
	}
	r, err := NewRelay(o, tr, RelayOptions{BatchSize: crashBatch, PollInterval: 20 * time.Millisecond})
	if err != nil {
		fail("relay", err)
	}
	if err := r.Start(context.Background()); err != nil {
		fail("start", err)
	}
	time.Sleep(10 * time.Minute) // the parent kills it long before
	os.Exit(4)
}
