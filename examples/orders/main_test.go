package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/busway/busway/internal/syncbuf"

	"github.com/google/uuid"
	natsgo "github.com/nats-io/nats.go"
	"github.com/twmb/franz-go/pkg/kfake"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/fx"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/examples/orders/app"
	"github.com/busway/busway/examples/orders/events"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// childEnv carries the arguments of run when the test binary is started as
// the orders program (TestKillRestart kills it).
const childEnv = "ORDERS_TEST_CHILD_ARGS"

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		var args []string
		if err := json.Unmarshal([]byte(v), &args); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := run(context.Background(), args, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "orders:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// running is an app started in this process.
type running struct {
	url  string
	tr   transport.Transport
	once sync.Once
	a    *fx.App
}

// stop stops the app (once).
func (r *running) stop(t *testing.T) {
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.a.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
}

// startApp starts the app in this process on busURL ("" is the default,
// embedded NATS in dataDir) and returns its base URL and transport. It
// stops when the test ends.
func startApp(t *testing.T, busURL, dataDir string, opts ...func(*app.Options)) (string, transport.Transport) {
	r, _ := startAppStoppable(t, busURL, dataDir, opts...)
	return r.url, r.tr
}

func startAppStoppable(t *testing.T, busURL, dataDir string, opts ...func(*app.Options)) (*running, transport.Transport) {
	t.Helper()
	var srv *app.Server
	var tr transport.Transport
	o := app.Options{DataDir: dataDir, Addr: "127.0.0.1:0", BusURL: busURL, Log: io.Discard}
	for _, f := range opts {
		f(&o)
	}
	a := app.New(o, fx.Populate(&srv, &tr))
	if err := a.Err(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("start on %q: %v", busURL, err)
	}
	r := &running{url: "http://" + srv.Addr(), tr: tr, a: a}
	t.Cleanup(func() { r.stop(t) })
	return r, tr
}

const e2eOrders = 60 // one poison order: #42

func TestEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		url     func(t *testing.T) string
		durable bool // the dead-letter topic can be read again
	}{
		{"chanbus", func(*testing.T) string { return "chan://" }, false},
		{"embedded-nats", func(*testing.T) string { return "" }, true},
		{"nats", realNATS, true},
		{"kafka-kfake", kfakeURL, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			base, tr := startApp(t, tc.url(t), dir)
			ctx := t.Context()
			sum, err := Script{URL: base, Orders: e2eOrders, RunID: "e2e", Timeout: 60 * time.Second}.Run(ctx)
			if err != nil {
				t.Fatal(err)
			}
			checkSummary(t, sum, e2eOrders)
			checkEffects(t, ctx, dir, "e2e", e2eOrders)
			if tc.durable {
				checkDLQ(t, tr, "e2e", []string{OrderRequest("e2e", 42).ID})
			}
		})
	}
}

func checkSummary(t *testing.T, s Summary, n int) {
	t.Helper()
	poison := 0
	for i := range n {
		if i%PoisonEvery == 42 {
			poison++
		}
	}
	if s.Placed != n || s.Shipped != n-poison || s.Paid != n-poison || s.Failed != poison {
		t.Errorf("summary %+v: want %d placed, %d paid and shipped, %d dead-lettered", s, n, n-poison, poison)
	}
	if s.Retried == 0 {
		t.Errorf("summary %+v: no payment was retried", s)
	}
	for r, c := range s.Reasons {
		if !strings.HasPrefix(r, "billing: ") || !strings.Contains(r, "reported stolen") || c != poison {
			t.Errorf("dead-letter reason %q (%d orders): want billing's stolen card for %d orders", r, c, poison)
		}
	}
	if len(s.Reasons) != 1 {
		t.Errorf("dead-letter reasons %v: want one", s.Reasons)
	}
}

// checkEffects waits until every module's effects of the run are in its
// database and checks that each happened exactly once: one charge and one
// shipment per paid order, none for a poison order, one mail per event.
func checkEffects(t *testing.T, ctx context.Context, dir, run string, n int) {
	t.Helper()
	billing, shipping, notif := openDB(t, dir, "billing"), openDB(t, dir, "shipping"), openDB(t, dir, "notifications")
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var mails int
		err := notif.QueryRowContext(ctx, `SELECT count(*) FROM mails WHERE substr(order_id, 1, length(?)) = ?`, run, run).Scan(&mails)
		poison := (n + PoisonEvery - 43) / PoisonEvery
		want := n + 2*(n-poison) // placed for each, receipt and shipped for the paid
		if err == nil && mails >= want {
			if mails > want {
				t.Errorf("%d mails, want %d", mails, want)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("mails: %d of %d (%v)", mails, want, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for i := range n {
		id := OrderRequest(run, i).ID
		want := 1
		if i%PoisonEvery == 42 {
			want = 0
		}
		for _, q := range []struct {
			db    *sql.DB
			query string
		}{
			{billing, `SELECT count(*) FROM charges WHERE order_id = ?`},
			{shipping, `SELECT count(*) FROM shipments WHERE order_id = ?`},
		} {
			var c int
			if err := q.db.QueryRowContext(ctx, q.query, id).Scan(&c); err != nil {
				t.Fatal(err)
			}
			if c != want {
				t.Errorf("order %s: %q = %d, want %d", id, q.query, c, want)
			}
		}
	}
}

// checkDLQ reads the dead-letter topic from its start in a group of its
// own and checks that it holds exactly the poison orders, unchanged, with
// billing's reason.
func checkDLQ(t *testing.T, tr transport.Transport, run string, want []string) {
	t.Helper()
	got := make(chan *transport.Message, 16)
	sub, err := tr.Subscribe(t.Context(), events.TopicOrdersDLQ, func(ctx context.Context, m *transport.Message) error {
		got <- m.Clone()
		return nil
	}, transport.SubscribeOptions{Group: "dlq-check", StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	var ids []string
	timeout := time.After(30 * time.Second)
	for len(ids) < len(want) {
		select {
		case m := <-got:
			e, err := bus.Decode[events.OrderPlaced](nil, m)
			if err != nil {
				t.Fatalf("dead letter %s does not decode as the OrderPlaced it was: %v", m.ID, err)
			}
			if !strings.HasPrefix(e.Data.OrderID, run+"-") {
				continue
			}
			ids = append(ids, e.Data.OrderID)
			h := m.Header
			if h[middleware.HeaderDLQGroup] != "billing" || !strings.Contains(h[middleware.HeaderDLQError], "reported stolen") ||
				h[middleware.HeaderDLQPermanent] != "true" || h[middleware.HeaderDLQTopic] != events.TopicOrders {
				t.Errorf("dead letter of %s: headers %v", e.Data.OrderID, h)
			}
		case <-timeout:
			t.Fatalf("dead letters %v, want %v", ids, want)
		}
	}
	slices.Sort(ids)
	if !slices.Equal(ids, want) {
		t.Errorf("dead letters %v, want %v", ids, want)
	}
}

func openDB(t *testing.T, dir, module string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, module+".db")+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// realNATS is the machine's NATS server (BUS_TEST_NATS_URL) with a stream
// and subject prefix of this test's own, deleted afterwards.
func realNATS(t *testing.T) string {
	raw := os.Getenv("BUS_TEST_NATS_URL")
	if raw == "" {
		t.Skip("BUS_TEST_NATS_URL is not set: no real NATS server to test against")
	}
	id := strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	stream := "ORDERS_E2E_" + id
	t.Cleanup(func() {
		nc, err := natsgo.Connect(raw)
		if err != nil {
			t.Logf("delete stream %s: %v", stream, err)
			return
		}
		defer nc.Close()
		js, err := nc.JetStream()
		if err == nil {
			err = js.DeleteStream(stream)
		}
		if err != nil {
			t.Logf("delete stream %s: %v", stream, err)
		}
	})
	sep := "?"
	if strings.Contains(raw, "?") {
		sep = "&"
	}
	return raw + sep + "stream=" + stream + "&prefix=orderse2e" + id + "&ack_wait=5s"
}

// kfakeURL starts an in-process Kafka cluster (franz-go's kfake).
func kfakeURL(t *testing.T) string {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(3), kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return "kafka://" + strings.Join(c.ListenAddrs(), ",") +
		"?partitions=3&commit_interval=100ms&session_timeout=3s&heartbeat_interval=100ms&rebalance_timeout=5s&fetch_max_wait=100ms&retry_backoff=20ms&retry_backoff_max=500ms&drain_timeout=3s"
}

// TestKillRestart kills the program (SIGKILL) while orders are being
// placed and handled on embedded NATS, restarts it on the same data
// directory and checks that every order reached its final state and that
// no order was charged or shipped twice.
func TestKillRestart(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String() // both runs serve here, so clients just retry
	ln.Close()
	args := []string{"-data", dir, "-addr", addr, "-ready-file", filepath.Join(dir, "ready")}
	busURL := app.DefaultURL(dir) + "&ack_wait=2s" // a killed run's unacked events come back soon

	first := startChild(t, args, busURL)
	const n = 120
	c := &Client{URL: "http://" + addr}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var placed atomic.Int64
	var wg sync.WaitGroup
	work := make(chan int)
	errs := make(chan error, n)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				if err := c.Place(ctx, OrderRequest("kill", i)); err != nil {
					errs <- err
				}
				placed.Add(1)
			}
		})
	}
	go func() {
		defer close(work)
		for i := range n {
			select {
			case work <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Kill while orders are being placed and the modules are busy.
	for placed.Load() < n/2 {
		if ctx.Err() != nil {
			t.Fatal("orders are not being placed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	l, err := c.List(ctx, "kill")
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	t.Logf("killed with %d orders placed; just before: %v", placed.Load(), l.Counts)
	os.Remove(filepath.Join(dir, "ready"))

	second := startChild(t, args, busURL)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	l, err = c.WaitFinal(ctx, "kill", n, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, Summarize(l.Orders), n)
	checkEffects(t, ctx, dir, "kill", n)

	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Errorf("graceful stop after SIGTERM: %v", err)
	}
}

// startChild starts this test binary as the orders program and waits
// until it serves.
func startChild(t *testing.T, args []string, busURL string) *exec.Cmd {
	t.Helper()
	js, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js), "BUS_URL="+busURL)
	cmd.Stderr = &prefixWriter{t: t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	ready := args[len(args)-1]
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatal("the program did not start serving")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// prefixWriter logs a child's stderr lines that are not routine.
type prefixWriter struct {
	t  *testing.T
	mu sync.Mutex
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if strings.Contains(line, `"level":"ERROR"`) || !strings.HasPrefix(line, "{") {
			w.t.Log("child:", line)
		}
	}
	return len(p), nil
}

// TestObservability: one order gives one trace from the HTTP request
// through every module; /metrics shows the bus's and the relays' metrics.
func TestObservability(t *testing.T) {
	var traces syncbuf.Buffer
	base, _ := startAppStoppable(t, "chan://", t.TempDir(), func(o *app.Options) { o.Traces = &traces })
	c := &Client{URL: base.url}
	ctx := t.Context()
	if err := c.Place(ctx, OrderRequest("trace", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitFinal(ctx, "trace", 1, func(int) {}); err != nil {
		t.Fatal(err)
	}
	_, metrics, err := c.do(ctx, "GET", "/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"messaging_process_duration_seconds", "messaging_client_consumed_messages", "busway_outbox_published"} {
		if !strings.Contains(string(metrics), m) {
			t.Errorf("/metrics has no %s:\n%s", m, metrics)
		}
	}
	base.stop(t) // flushes the spans

	type span struct {
		Name        string
		SpanContext struct{ TraceID string }
		Parent      struct{ TraceID string }
	}
	dec := json.NewDecoder(strings.NewReader(traces.String()))
	traceIDs := map[string][]string{}
	for dec.More() {
		var s span
		if err := dec.Decode(&s); err != nil {
			t.Fatal(err)
		}
		traceIDs[s.SpanContext.TraceID] = append(traceIDs[s.SpanContext.TraceID], s.Name)
	}
	var trace []string
	for _, names := range traceIDs {
		if slices.Contains(names, "POST /orders") {
			trace = names
		}
	}
	slices.Sort(trace)
	// billing handles orders; orders, shipping and notifications handle
	// payments; orders and notifications handle shipments.
	want := []string{"POST /orders", "process orders", "process orders", "process payments", "process payments", "process payments", "process shipments", "process shipments"}
	if !slices.Equal(trace, want) {
		t.Errorf("the order's trace has spans %q, want %q (all traces: %v)", trace, want, traceIDs)
	}
}

// TestDemo runs the program's -demo mode as make demo does (on chanbus,
// and fewer orders): it exits without error and prints the summary.
func TestDemo(t *testing.T) {
	t.Setenv("BUS_URL", "chan://")
	var out bytes.Buffer
	dir := t.TempDir()
	if err := run(t.Context(), []string{"-demo", "-n", "50", "-data", dir, "-trace-stdout", filepath.Join(dir, "spans.json")}, &out, io.Discard); err != nil {
		t.Fatalf("run -demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"orders demo on chan://",
		"placed           50",
		"paid             49",
		"shipped          49",
		"dead-lettered     1  to orders.dlq",
		"1 × billing: busway: after 1 attempt(s): card declined: card …0002 reported stolen",
		"latency        p50 ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "spans.json")); err != nil || fi.Size() == 0 {
		t.Errorf("-trace-stdout wrote no spans: %v", err)
	}
}

// TestOTLPExport: with OTEL_EXPORTER_OTLP_ENDPOINT set, the program exports
// its spans by OTLP over HTTP; the receiver here decodes what arrives.
func TestOTLPExport(t *testing.T) {
	var (
		mu    sync.Mutex
		names []string
		bad   []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/v1/traces" || err != nil {
			bad = append(bad, fmt.Sprintf("%s %s: %v", r.Method, r.URL.Path, err))
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					names = append(names, s.Name)
				}
			}
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Write(b)
	}))
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("BUS_URL", "chan://")
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-demo", "-n", "5", "-data", t.TempDir()}, &out, io.Discard); err != nil {
		t.Fatalf("run -demo: %v\n%s", err, out.String())
	}
	mu.Lock() // the exporter flushed at stop, before run returned
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("the OTLP receiver got requests it could not take: %q", bad)
	}
	for _, want := range []string{"POST /orders", "process orders", "process payments", "process shipments"} {
		if !slices.Contains(names, want) {
			t.Errorf("no %q span exported by OTLP (got %d spans: %q)", want, len(names), names)
		}
	}
}
