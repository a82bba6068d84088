package nats_test

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/internal/syncbuf"

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
)

// provisionServers runs f on an embedded server and, with
// BUS_TEST_NATS_URL, on the real one, each with a fresh stream name and
// subject prefix (deleted at the end on the real server).
func provisionServers(t *testing.T, f func(t *testing.T, url, stream, prefix string)) {
	t.Run("embedded", func(t *testing.T) {
		srv := startServer(t, &server.Options{})
		t.Cleanup(func() { stop(srv) })
		stream, prefix := uniqueStream(t)
		f(t, fmt.Sprintf("nats://127.0.0.1:%d", portOf(srv)), stream, prefix)
	})
	t.Run("real", func(t *testing.T) {
		url := realURL()
		if url == "" {
			t.Skip("BUS_TEST_NATS_URL is not set")
		}
		stream, prefix := uniqueStream(t)
		t.Cleanup(func() { deleteStream(t, url, stream) })
		f(t, url, stream, prefix)
	})
}

func operatorJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestCreateModeKeepsOperatorLimits: in create mode, an existing stream
// whose limits an operator set keeps them when busway starts (with a
// Config whose stream settings differ); busway only adds its subjects,
// logs what differs, and the stream works. Before, New applied Config's
// (default) settings and so removed MaxAge, MaxBytes, MaxMsgs and the
// operator's duplicate window, or failed where the server refused them.
func TestCreateModeKeepsOperatorLimits(t *testing.T) {
	t.Run("limits", func(t *testing.T) { testKeepsOperatorLimits(t, false) })
	t.Run("storage-replicas", func(t *testing.T) { testKeepsOperatorLimits(t, true) })
}

// testKeepsOperatorLimits: with different, Config's storage and replicas
// differ from the stream's too.
func testKeepsOperatorLimits(t *testing.T, different bool) {
	provisionServers(t, func(t *testing.T, url, stream, prefix string) {
		js := operatorJS(t, url)
		ops := prefix + "-ops.>"
		opCfg := jetstream.StreamConfig{
			Name:       stream,
			Subjects:   []string{ops},
			Storage:    jetstream.MemoryStorage,
			Replicas:   1,
			MaxAge:     time.Hour,
			MaxBytes:   8 << 20,
			MaxMsgs:    5000,
			Duplicates: 30 * time.Second,
			Discard:    jetstream.DiscardNew,
			Retention:  jetstream.LimitsPolicy,
		}
		if _, err := js.CreateStream(ctxT(t), opCfg); err != nil {
			t.Fatal(err)
		}
		var logs syncbuf.Buffer
		cfg := busnats.Config{Servers: []string{url}, Stream: stream, SubjectPrefix: prefix,
			Storage: busnats.StorageMemory, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
		if different {
			// Even the storage and replicas differ (a single server
			// could not have 3 replicas).
			cfg.Storage, cfg.Replicas, cfg.Duplicates = busnats.StorageFile, 3, time.Minute
		}
		tr := open(t, cfg)
		defer tr.Close()

		st, err := js.Stream(ctxT(t), stream)
		if err != nil {
			t.Fatal(err)
		}
		got := st.CachedInfo().Config
		if !slices.Equal(got.Subjects, []string{ops, prefix + ".>"}) {
			t.Errorf("subjects %q, want the operator's %q and busway's %q", got.Subjects, ops, prefix+".>")
		}
		if got.Storage != opCfg.Storage || got.Replicas != opCfg.Replicas || got.MaxAge != opCfg.MaxAge || got.MaxBytes != opCfg.MaxBytes ||
			got.MaxMsgs != opCfg.MaxMsgs || got.Duplicates != opCfg.Duplicates || got.Discard != opCfg.Discard || got.Retention != opCfg.Retention {
			t.Errorf("busway changed the operator's stream settings:\n got storage %v replicas %d max_age %v max_bytes %d max_msgs %d duplicates %v discard %v retention %v\nwant storage %v replicas %d max_age %v max_bytes %d max_msgs %d duplicates %v discard %v retention %v",
				got.Storage, got.Replicas, got.MaxAge, got.MaxBytes, got.MaxMsgs, got.Duplicates, got.Discard, got.Retention,
				opCfg.Storage, opCfg.Replicas, opCfg.MaxAge, opCfg.MaxBytes, opCfg.MaxMsgs, opCfg.Duplicates, opCfg.Discard, opCfg.Retention)
		}
		out := logs.String()
		names := []string{"max_age", "duplicates", "max_bytes", "max_msgs", "discard"}
		if different {
			names = append(names, "storage", "replicas")
		}
		for _, s := range names {
			if !strings.Contains(out, s) {
				t.Errorf("the log does not name the differing setting %s:\n%s", s, out)
			}
		}
		t.Log(strings.TrimSpace(out))

		// The stream works for busway.
		col := newCollector()
		subscribe(t, tr, "orders", col.handle, transport.SubscribeOptions{Group: "g"})
		if err := tr.Publish(ctxT(t), "orders", &transport.Message{ID: "1"}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 10*time.Second, "delivery on the operator's stream", func() bool { return col.get("1") == 1 })

		// A second start, subjects already there: nothing changes either.
		cfg.Logger = nil
		tr2 := open(t, cfg)
		tr2.Close()
		st, err = js.Stream(ctxT(t), stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config; got.MaxAge != opCfg.MaxAge || got.MaxBytes != opCfg.MaxBytes || len(got.Subjects) != 2 {
			t.Errorf("a second start changed the stream: max_age %v max_bytes %d subjects %q", got.MaxAge, got.MaxBytes, got.Subjects)
		}
	})
}

// TestCreateModeRefusesRetention: a stream with work-queue or interest
// retention (a message removed once one consumer, or the consumers of the
// moment, acked it) cannot give every group every message: New refuses it
// with an error that names the stream and its retention, in create and in
// bind mode, and leaves the stream as it was.
func TestCreateModeRefusesRetention(t *testing.T) {
	for _, ret := range []jetstream.RetentionPolicy{jetstream.WorkQueuePolicy, jetstream.InterestPolicy} {
		t.Run(ret.String(), func(t *testing.T) {
			provisionServers(t, func(t *testing.T, url, stream, prefix string) {
				js := operatorJS(t, url)
				if _, err := js.CreateStream(ctxT(t), jetstream.StreamConfig{Name: stream, Subjects: []string{prefix + ".>"},
					Storage: jetstream.MemoryStorage, Retention: ret, MaxAge: time.Hour}); err != nil {
					t.Fatal(err)
				}
				for _, p := range []busnats.Provision{busnats.ProvisionCreate, busnats.ProvisionBind} {
					tr, err := busnats.New(ctxT(t), busnats.Config{Servers: []string{url}, Stream: stream, SubjectPrefix: prefix, Provision: p})
					if err == nil {
						tr.Close()
						t.Fatalf("New (%v) on a stream with %v retention succeeded, want an error", p, ret)
					}
					if !errors.Is(err, transport.ErrInvalidOptions) || !strings.Contains(err.Error(), "retention") || !strings.Contains(err.Error(), stream) {
						t.Fatalf("New (%v) on a stream with %v retention = %v, want ErrInvalidOptions naming the stream and its retention", p, ret, err)
					}
					t.Log(err)
				}
				st, err := js.Stream(ctxT(t), stream)
				if err != nil {
					t.Fatal(err)
				}
				if got := st.CachedInfo().Config; got.Retention != ret || got.MaxAge != time.Hour {
					t.Fatalf("the refused stream changed: retention %v max_age %v", got.Retention, got.MaxAge)
				}
			})
		})
	}
}

// TestCreateOverlappingStream: a second stream name with the subject
// prefix of an existing stream cannot be created (a subject belongs to one
// stream): New fails with ErrInvalidOptions naming the stream that holds
// the subjects, so that the user can name it or choose another prefix.
func TestCreateOverlappingStream(t *testing.T) {
	provisionServers(t, func(t *testing.T, url, stream, prefix string) {
		open(t, busnats.Config{Servers: []string{url}, Stream: stream, SubjectPrefix: prefix, Storage: busnats.StorageMemory}).Close()
		other := stream + "_OTHER"
		tr, err := busnats.New(ctxT(t), busnats.Config{Servers: []string{url}, Stream: other, SubjectPrefix: prefix, Storage: busnats.StorageMemory})
		if err == nil {
			tr.Close()
			deleteStream(t, url, other)
			t.Fatalf("New with stream %q over %q's subjects succeeded, want an error", other, stream)
		}
		t.Log(err)
		if !errors.Is(err, transport.ErrInvalidOptions) {
			t.Errorf("error %v, want ErrInvalidOptions", err)
		}
		for _, want := range []string{other, fmt.Sprintf("stream %q holds subject %q", stream, prefix+".>")} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	})
}
