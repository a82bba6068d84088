package kafka

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// oversized, as a failFetches code, is a response larger than a fetch may
// return: a partition of oversizedBytes of garbage, past the bound a test
// sets in place of maxFetchResponse's (see withResponseBound): a 100 MiB
// response takes kfake, which serves its requests one at a time, long
// enough under -race to miss the group's heartbeats.
const (
	oversized      = math.MinInt16
	oversizedBytes = 1 << 20
)

// withResponseBound lowers tr's fetch response bound below oversizedBytes.
// Call it before tr's first Subscribe.
func withResponseBound(tr *Transport) *Transport {
	tr.cfg.maxResponse = oversizedBytes / 2
	return tr
}

// failFetches makes every other fetch of topic, up to the 2*len(fails)th,
// fail in turn with fails[i]: a partition error code, 0 for a connection
// the broker closes, or oversized. It returns how many it failed so far.
func failFetches(c *kfake.Cluster, topic string, fails []int16) func() int {
	var mu sync.Mutex
	seen, failed := 0, 0
	c.ControlKey(int16(kmsg.Fetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.FetchRequest)
		if len(req.Topics) == 0 || req.Topics[0].Topic != topic {
			return nil, nil, false
		}
		mu.Lock()
		defer mu.Unlock()
		seen++
		if seen%2 == 1 || failed == len(fails) {
			return nil, nil, false
		}
		code := fails[failed]
		failed++
		if code == 0 {
			return nil, errors.New("injected: connection closed"), true
		}
		resp := req.ResponseKind().(*kmsg.FetchResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewFetchResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewFetchResponseTopicPartition()
				sp.Partition = rp.Partition
				if code == oversized {
					sp.RecordBatches = make([]byte, oversizedBytes)
				} else {
					sp.ErrorCode = code
				}
				sp.HighWatermark, sp.LastStableOffset, sp.LogStartOffset = -1, -1, -1
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return failed
	}
}

// A partition's fetch loop retries what a fetch fails with (the leader
// moved, an offset the broker calls out of range although it is not,
// another broker error, a connection the broker closes, a response larger
// than a fetch may return) and goes on from
// the offset after the last record it dispatched: every message is handled
// once, each key's in publish order.
func TestFetchErrorsRetried(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.FetchMaxBytes = 1024 // a few record batches a fetch: the errors come mid-stream
	tr := withResponseBound(open(t, cfg))
	topic := transporttest.UniqueTopic(t)
	const n, keys = 600, 20
	for i := 0; i < n; i += 10 {
		var msgs []*transport.Message
		for j := i; j < i+10; j++ {
			msgs = append(msgs, &transport.Message{ID: strconv.Itoa(j), Key: "k-" + strconv.Itoa(j%keys), Body: []byte("x")})
		}
		if err := tr.Publish(t.Context(), topic, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	fails := []int16{
		kerr.NotLeaderForPartition.Code, kerr.OffsetOutOfRange.Code, 0, kerr.UnknownServerError.Code,
		kerr.NotLeaderForPartition.Code, 0, kerr.OffsetOutOfRange.Code, kerr.UnknownTopicOrPartition.Code,
		oversized,
	}
	failed := failFetches(c, topic, fails)

	var mu sync.Mutex
	handled := make(map[string]int)
	last := make(map[string]int) // key -> last index handled
	var disorder []string
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		i, _ := strconv.Atoi(m.ID)
		mu.Lock()
		defer mu.Unlock()
		handled[m.ID]++
		if l, ok := last[m.Key]; ok && i <= l {
			disorder = append(disorder, m.Key+": "+strconv.Itoa(i)+" after "+strconv.Itoa(l))
		}
		last[m.Key] = i
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), Concurrency: 4, StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == n
	})
	if err := sub.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := failed(); got != len(fails) {
		t.Errorf("%d fetches failed, want %d (the test did not make its errors)", got, len(fails))
	}
	mu.Lock()
	defer mu.Unlock()
	for id, k := range handled {
		if k != 1 {
			t.Errorf("message %s handled %d times, want once", id, k)
		}
	}
	if len(disorder) > 0 {
		t.Errorf("key order broken: %v", disorder)
	}
}

// A fetch response holding many more records than MaxInFlight is
// dispatched in parts, in order, each record once, while the next fetch
// is read ahead.
func TestFetchLargeBatch(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.Topics.Partitions = 1
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)
	const n = 3*4096 + 100
	msgs := make([]*transport.Message, 0, 1000)
	for i := range n {
		msgs = append(msgs, &transport.Message{ID: strconv.Itoa(i), Key: "k-" + strconv.Itoa(i%7)})
		if len(msgs) == cap(msgs) || i == n-1 {
			if err := tr.Publish(t.Context(), topic, msgs...); err != nil {
				t.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	var mu sync.Mutex
	handled := make(map[string]int)
	last := make(map[string]int)
	var disorder []string
	sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
		i, _ := strconv.Atoi(m.ID)
		mu.Lock()
		defer mu.Unlock()
		handled[m.ID]++
		if l, ok := last[m.Key]; ok && i <= l {
			disorder = append(disorder, m.Key+": "+strconv.Itoa(i)+" after "+strconv.Itoa(l))
		}
		last[m.Key] = i
		return nil
	}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t), Concurrency: 3, StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 60*time.Second, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == n
	})
	if err := sub.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, k := range handled {
		if k != 1 {
			t.Errorf("message %s handled %d times, want once", id, k)
		}
	}
	if len(disorder) > 0 {
		t.Errorf("key order broken (%d): %v", len(disorder), disorder[:min(len(disorder), 10)])
	}
}

// A response that declares a size past maxFetchResponse (here 1 GiB, from
// a broker that sends nothing more) is an error that names the size and the
// bound, before any buffer of that size is allocated, and the fetch asks
// again from the same offset.
func TestFetchResponseSizeBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		var size [4]byte
		if _, err := io.ReadFull(c, size[:]); err != nil {
			served <- err
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(size[:]))); err != nil {
			served <- err
			return
		}
		_, err = c.Write(binary.BigEndian.AppendUint32(nil, 1<<30))
		served <- err
		_, _ = io.Copy(io.Discard, c) // until the client closes
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := &fetchConn{nc: &stoppableConn{Conn: nc, f: &fetchConns{}, r: bufio.NewReaderSize(nc, fetchReadBuffer)}}
	defer nc.Close()
	s := newTestSubscription(t, nil, 0)
	defer s.cancelRun()
	p := newTestPartition(s, 0)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f := s.fetchOnce(conn, p, 42)
	runtime.ReadMemStats(&after)
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(f.err, errMalformed) {
		t.Fatalf("error %v, want errMalformed", f.err)
	}
	t.Log(f.err)
	limit := maxFetchResponse(s.t.cfg.FetchMaxBytes)
	if s.t.cfg.maxResponse != limit {
		t.Fatalf("bound %d, want maxFetchResponse's %d", s.t.cfg.maxResponse, limit)
	}
	for _, want := range []string{strconv.Itoa(1 << 30), strconv.FormatInt(limit, 10), "FetchMaxBytes"} {
		if !strings.Contains(f.err.Error(), want) {
			t.Errorf("error %q does not say %q", f.err, want)
		}
	}
	if f.next != 42 || len(f.jobs) != 0 {
		t.Errorf("next offset %d with %d records, want 42 with none", f.next, len(f.jobs))
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("fetchOnce allocated %d bytes for a response it did not read", grew)
	}
}
