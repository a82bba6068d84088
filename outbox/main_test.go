package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// OrderPlaced is the test event.
type OrderPlaced struct {
	ID  string `json:"id"`
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

// env is one database under test with its own tables.
type env struct {
	name    string
	dialect Dialect
	dsn     string // PostgreSQL: for more *sql.DBs on the same database
	db      *sql.DB
	schema  string // PostgreSQL: the test's schema; SQLite: ""
	table   string
	inbox   string
	path    string // SQLite file
}

// ph returns the i-th placeholder of the dialect.
func (e *env) ph(i int) string {
	if e.dialect == PostgreSQL {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

func (e *env) tbl(name string) string {
	if e.schema != "" {
		return e.schema + "." + name
	}
	return name
}

// openDB opens another *sql.DB on the env's database (another "process").
func (e *env) openDB(t testing.TB) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	if e.dialect == PostgreSQL {
		db, err = sql.Open("pgx", e.dsn)
	} else {
		db, err = sql.Open("sqlite", sqliteDSN(e.path))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func sqliteDSN(path string) string {
	return path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate"
}

var schemaSeq atomic.Int64

func pgDSN() string { return os.Getenv("BUS_TEST_POSTGRES_DSN") }

func newSQLite(t testing.TB) *env {
	t.Helper()
	e := &env{name: "sqlite", dialect: SQLite, path: filepath.Join(t.TempDir(), "outbox.db")}
	e.db = e.openDB(t)
	e.table, e.inbox = "busway_outbox", "busway_inbox"
	return e
}

func newPostgres(t testing.TB) *env {
	t.Helper()
	e := &env{name: "postgres", dialect: PostgreSQL, dsn: pgDSN()}
	e.db = e.openDB(t)
	e.schema = fmt.Sprintf("outbox_test_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6, schemaSeq.Add(1))
	if _, err := e.db.Exec("CREATE SCHEMA " + e.schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", e.dsn)
		if err == nil {
			db.Exec("DROP SCHEMA " + e.schema + " CASCADE")
			db.Close()
		}
	})
	e.table, e.inbox = e.schema+".busway_outbox", e.schema+".busway_inbox"
	return e
}

// envs returns SQLite always and PostgreSQL when BUS_TEST_POSTGRES_DSN is
// set.
func envs(t *testing.T) []func(testing.TB) *env {
	fs := []func(testing.TB) *env{newSQLite}
	if pgDSN() != "" {
		fs = append(fs, newPostgres)
	} else {
		t.Log("BUS_TEST_POSTGRES_DSN unset: PostgreSQL not tested")
	}
	return fs
}

func forEach(t *testing.T, f func(t *testing.T, e *env)) {
	for _, mk := range envs(t) {
		e := mk(t)
		t.Run(e.name, func(t *testing.T) { f(t, e) })
	}
}

func needPostgres(t *testing.T) *env {
	if pgDSN() == "" {
		t.Skip("BUS_TEST_POSTGRES_DSN unset: this test needs PostgreSQL")
	}
	return newPostgres(t)
}

// newOutbox makes a migrated Outbox on db for e's tables.
func (e *env) newOutbox(t testing.TB, db *sql.DB, b *bus.Bus) *Outbox {
	t.Helper()
	o, err := New(db, Options{Dialect: e.dialect, Bus: b, Table: e.table, InboxTable: e.inbox})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func (e *env) createOrders(t testing.TB) {
	t.Helper()
	if _, err := e.db.Exec("CREATE TABLE " + e.tbl("orders") + " (id TEXT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
}

// newBus is a bus on a fresh chanbus, shut down at cleanup.
func newBus(t testing.TB) (*bus.Bus, *chanbus.Transport) {
	t.Helper()
	tr := chanbus.New(chanbus.WithBuffer(1024))
	b := bus.New(tr, bus.WithSource("orders-svc"))
	bus.Register[OrderPlaced](b, "orders")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b.Shutdown(ctx)
	})
	return b, tr
}

// sink records delivered events.
type sink struct {
	mu   sync.Mutex
	got  []bus.Event[OrderPlaced]
	byID map[string]int
}

func (s *sink) handle(_ context.Context, e bus.Event[OrderPlaced]) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID == nil {
		s.byID = make(map[string]int)
	}
	s.got = append(s.got, e)
	s.byID[e.Data.ID]++
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

func (s *sink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

func (s *sink) events() []bus.Event[OrderPlaced] {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bus.Event[OrderPlaced](nil), s.got...)
}

// subscribe starts b with a sink for OrderPlaced in group "billing".
func subscribe(t testing.TB, b *bus.Bus, opts ...bus.SubscribeOption) *sink {
	t.Helper()
	s := &sink{}
	if _, err := bus.Subscribe(b, "billing", s.handle, opts...); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// startRelay starts a relay and stops it at cleanup.
func startRelay(t testing.TB, o *Outbox, pub transport.Publisher, opts RelayOptions) *Relay {
	t.Helper()
	r, err := NewRelay(o, pub, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.Stop(ctx); err != nil {
			t.Errorf("relay Stop: %v", err)
		}
	})
	return r
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (e *env) count(t testing.TB, table string) int {
	t.Helper()
	var n int
	if err := e.db.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
