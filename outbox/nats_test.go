package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
)

var natsSeq atomic.Int64

// natsEnv is a busway NATS transport on an embedded JetStream server, a
// bus on it, and a raw nats.go connection to the same server.
type natsEnv struct {
	tr *busnats.Transport
	b  *bus.Bus
	nc *natsgo.Conn
	js jetstream.JetStream
}

func newNATS(t testing.TB) *natsEnv {
	t.Helper()
	ctx := context.Background()
	n := natsSeq.Add(1)
	tr, err := busnats.New(ctx, busnats.Config{
		Embedded:       &busnats.EmbeddedConfig{StoreDir: t.TempDir()},
		Stream:         fmt.Sprintf("OUTBOX_%d", n),
		SubjectPrefix:  fmt.Sprintf("outbox%d", n),
		PublishTimeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := natsgo.Connect(tr.EmbeddedURL())
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		tr.Close()
		t.Fatal(err)
	}
	b := bus.New(tr, bus.WithSource("orders-svc"))
	bus.Register[OrderPlaced](b, "orders")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b.Shutdown(ctx) // closes tr and the embedded server
		nc.Close()
	})
	return &natsEnv{tr: tr, b: b, nc: nc, js: js}
}

// handledIDs are the IDs of the events a consume handler got, in order.
type handledIDs struct {
	mu   sync.Mutex
	list []string
}

func (h *handledIDs) ids() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.list)
}

// consume subscribes group billing to OrderPlaced from the earliest
// message, starts the bus, and records each event's ID as it is handled.
func (n *natsEnv) consume(t testing.TB) *handledIDs {
	t.Helper()
	h := &handledIDs{}
	if _, err := bus.Subscribe(n.b, "billing", func(_ context.Context, ev bus.Event[OrderPlaced]) error {
		h.mu.Lock()
		h.list = append(h.list, ev.Data.ID)
		h.mu.Unlock()
		return nil
	}, bus.WithStartFrom(transport.StartEarliest)); err != nil {
		t.Fatal(err)
	}
	if err := n.b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return h
}

// stored is the number of messages the stream holds on topic's subject.
func (n *natsEnv) stored(t testing.TB, topic string) uint64 {
	t.Helper()
	s, err := n.js.Stream(context.Background(), n.tr.Stream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(n.tr.Subject(topic)))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[n.tr.Subject(topic)]
}

// TestNATSDropsReSendAfterCrash: a relay that dies between publish and
// delete leaves its rows; the relay that takes over publishes them again
// under the same Message.ID, and JetStream's duplicate window drops the
// re-send: the stream holds each event once and the consumer gets it once,
// without an inbox.
func TestNATSDropsReSendAfterCrash(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		n := newNATS(t)
		o := e.newOutbox(t, e.db, n.b)
		h := n.consume(t)
		const events = 20
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			for i := range events {
				if err := Publish(ctx, o, tx, OrderPlaced{ID: fmt.Sprint(i), Key: "k", Seq: i}, bus.WithKey("k")); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		r1, err := NewRelay(o, n.tr, RelayOptions{MinBackoff: time.Hour, MaxBackoff: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		crashed := make(chan struct{})
		var once sync.Once
		r1.afterPublish = func() error {
			once.Do(func() { close(crashed) })
			return errCrash
		}
		if err := r1.Start(ctx); err != nil {
			t.Fatal(err)
		}
		<-crashed
		if err := r1.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if c := e.count(t, e.table); c != events {
			t.Fatalf("after the crash %d rows in the outbox, want %d", c, events)
		}
		if s := n.stored(t, "orders"); s != events {
			t.Fatalf("after the first publish the stream holds %d messages, want %d", s, events)
		}
		r2 := startRelay(t, e.newOutbox(t, e.openDB(t), nil), n.tr, RelayOptions{})
		waitFor(t, "the outbox to empty", 20*time.Second, func() bool { return e.count(t, e.table) == 0 })
		// The counter follows the delete.
		waitFor(t, "the re-send to be counted", 10*time.Second, func() bool { return r2.Stats().Published == events })
		// Every re-send was acknowledged (the outbox is empty), as a
		// duplicate: the stream still holds each event once.
		if s := n.stored(t, "orders"); s != events {
			t.Fatalf("after the re-send the stream holds %d messages, want %d: JetStream did not drop the re-send", s, events)
		}
		waitFor(t, "every event", 20*time.Second, func() bool { return len(h.ids()) >= events })
		got := map[string]int{}
		for _, id := range h.ids() {
			got[id]++
		}
		if len(got) != events {
			t.Fatalf("%d distinct events delivered, want %d", len(got), events)
		}
		for id, c := range got {
			if c != 1 {
				t.Fatalf("event %s delivered %d times", id, c)
			}
		}
	})
}

// natsWire is m as busway's NATS transport sends it to subject (the same
// headers and Nats-Msg-Id), for the raw reference.
func natsWire(subject string, m *transport.Message) *natsgo.Msg {
	h := make(natsgo.Header, len(m.Header)+2)
	for k, v := range m.Header {
		if strings.HasPrefix(k, transport.HeaderPrefix) {
			k = "ce-" + k[len(transport.HeaderPrefix):]
		}
		h[k] = []string{v}
	}
	h["ce-partitionkey"] = []string{m.Key}
	h["Nats-Msg-Id"] = []string{subject + "/" + m.ID}
	return &natsgo.Msg{Subject: subject, Data: m.Body, Header: h}
}

// BenchmarkNATSDrain: a backlog of b.N rows drained by the relay to NATS
// JetStream (embedded server, file storage; events/s until the stream
// acknowledged the last), beside, in the same call, raw-events/s: nats.go
// PublishMsgAsync of the same messages in batches of the relay's size
// (500), each batch awaited with PublishAsyncComplete, reading no
// database. relay/raw is the ratio: how close the relay comes to what the
// transport accepts.
func BenchmarkNATSDrain(b *testing.B) {
	dbs := map[string]func(testing.TB) *env{"sqlite": newSQLite}
	if pgDSN() != "" {
		dbs["postgres"] = newPostgres
	}
	for _, name := range []string{"sqlite", "postgres"} {
		mk := dbs[name]
		if mk == nil {
			continue
		}
		b.Run(name, func(b *testing.B) {
			n := newNATS(b)
			// Raw: the same envelope, built as Publish builds it.
			subject := n.tr.Subject("orders-raw")
			raw := make([]*natsgo.Msg, b.N)
			for i := range raw {
				_, m, err := bus.NewMessage(n.b, OrderPlaced{ID: "123456", Key: "k", Seq: i}, bus.WithKey(fmt.Sprint(i%50)))
				if err != nil {
					b.Fatal(err)
				}
				raw[i] = natsWire(subject, m)
			}
			start := time.Now()
			for i := 0; i < len(raw); i += 500 {
				for _, m := range raw[i:min(i+500, len(raw))] {
					if _, err := n.js.PublishMsgAsync(m); err != nil {
						b.Fatal(err)
					}
				}
				select {
				case <-n.js.PublishAsyncComplete():
				case <-time.After(time.Minute):
					b.Fatal("acks did not arrive")
				}
			}
			rawRate := float64(b.N) / time.Since(start).Seconds()

			e := mk(b)
			o := e.newOutbox(b, e.db, n.b)
			fillBacklog(b, o, b.N)
			start = time.Now()
			startRelay(b, o, n.tr, RelayOptions{})
			deadline := time.Now().Add(10 * time.Minute)
			for n.stored(b, "orders") < uint64(b.N) {
				if time.Now().After(deadline) {
					b.Fatalf("stored %d of %d", n.stored(b, "orders"), b.N)
				}
				time.Sleep(5 * time.Millisecond)
			}
			relay := float64(b.N) / time.Since(start).Seconds()
			b.ReportMetric(rawRate, "raw-events/s")
			b.ReportMetric(relay, "events/s")
			b.ReportMetric(relay/rawRate, "relay/raw")
		})
	}
}

// TestNATSRefusedValueMovedAside: a row whose message NATS cannot carry
// unchanged (a key with white space at its end, written by PublishMessage
// for a message built elsewhere) is refused by the transport, moved to
// Table_dead with the reason and reported; the rows around it are
// delivered, in order, and none is lost.
func TestNATSRefusedValueMovedAside(t *testing.T) {
	forEach(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		n := newNATS(t)
		o := e.newOutbox(t, e.db, n.b)
		h := n.consume(t)
		if err := o.Transact(ctx, func(tx *sql.Tx) error {
			if err := Publish(ctx, o, tx, OrderPlaced{ID: "a"}, bus.WithKey("k")); err != nil {
				return err
			}
			if err := o.PublishMessage(ctx, tx, "orders", &transport.Message{ID: "padded", Key: "k ", Body: []byte(`{}`)}); err != nil {
				return err
			}
			return Publish(ctx, o, tx, OrderPlaced{ID: "b"}, bus.WithKey("k"))
		}); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var reported []Poison
		startRelay(t, o, n.tr, RelayOptions{OnPoison: func(_ context.Context, p Poison) {
			mu.Lock()
			reported = append(reported, p)
			mu.Unlock()
		}})
		waitFor(t, "a and b", 20*time.Second, func() bool { return len(h.ids()) >= 2 })
		waitFor(t, "the outbox to empty", 20*time.Second, func() bool { return e.count(t, e.table) == 0 })
		if c := e.count(t, e.table+"_dead"); c != 1 {
			t.Fatalf("%d rows in the dead table, want 1", c)
		}
		var errText string
		if err := e.db.QueryRow("SELECT error FROM " + e.table + "_dead").Scan(&errText); err != nil || !strings.Contains(errText, "key") || !strings.Contains(errText, "white space") {
			t.Fatalf("dead row error %q (%v), want the transport's reason (the key's white space)", errText, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(reported) != 1 || reported[0].ID != "padded" || !errors.Is(reported[0].Err, transport.ErrInvalidMessage) {
			t.Fatalf("reported %+v, want the padded row with ErrInvalidMessage", reported)
		}
		if got := h.ids(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
			t.Fatalf("delivered %v, want [a b]", got)
		}
	})
}
