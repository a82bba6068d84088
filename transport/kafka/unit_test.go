package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// The Java client's partitioner: toPositive(murmur2(key)) % partitions. The
// hashes are the test vectors of Kafka's UtilsTest.testMurmur2.
func TestMurmur2MatchesJava(t *testing.T) {
	vectors := []struct {
		key  string
		hash int32
	}{
		{"21", -973932308},
		{"foobar", -790332482},
		{"a-little-bit-long-string", -985981536},
		{"a-little-bit-longer-string", -1486304829},
		{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
		{"abc", 479470107},
	}
	var b kafkago.Murmur2Balancer
	for _, n := range []int{1, 3, 7, 12, 100} {
		ids := make([]int, n)
		for i := range ids {
			ids[i] = i
		}
		for _, v := range vectors {
			want := int(uint32(v.hash)&0x7fffffff) % n
			if got := b.Balance(kafkago.Message{Key: []byte(v.key)}, ids...); got != want {
				t.Errorf("key %q, %d partitions: partition %d, Java's %d", v.key, n, got, want)
			}
		}
	}
}

// add records off as fetched and dispatched, as reserve does when there is
// room.
func (p *partition) add(off int64) {
	p.mu.Lock()
	p.pending = append(p.pending, pendingOffset{off: off})
	p.unfinished++
	p.mu.Unlock()
}

func TestPartitionCommitsOnlyContiguous(t *testing.T) {
	p := &partition{next: -1, committed: -1}
	offs := []int64{10, 11, 12, 14, 15, 20} // gaps: compaction, transaction markers
	for _, o := range offs {
		p.add(o)
	}
	step := func(o, want int64) {
		t.Helper()
		p.finish(o)
		if p.next != want {
			t.Fatalf("after finishing %d: commit position %d, want %d", o, p.next, want)
		}
	}
	step(12, -1)
	step(14, -1)
	step(11, -1)
	step(10, 15) // 10, 11, 12, 14 done: next to commit is after 14
	step(20, 15)
	step(15, 21)
	if len(p.pending) != 0 {
		t.Fatalf("pending %v after all finished", p.pending)
	}

	// Random completion order over many offsets: the position is always one
	// past a prefix of finished offsets.
	p = &partition{next: -1, committed: -1}
	const n = 5000
	for i := range n {
		p.add(int64(i))
	}
	done := make([]bool, n)
	for _, i := range rand.Perm(n) {
		done[i] = true
		p.finish(int64(i))
		prefix := 0
		for prefix < n && done[prefix] {
			prefix++
		}
		want := int64(prefix)
		if prefix == 0 {
			want = -1
		}
		if p.next != want {
			t.Fatalf("commit position %d, want %d", p.next, want)
		}
	}
}

// reserve takes jobs until window of them are past the first unfinished
// message, or window+every past the committed offset, whichever comes
// first, and none once either is reached.
func TestPartitionReserveBounds(t *testing.T) {
	jobs := make([]job, 64)
	for i := range jobs {
		jobs[i].off = int64(i)
	}
	for _, c := range []struct {
		name                     string
		pending, done, committed int // pending offsets, and done/doneCommitted counts
		window, every            int
		want                     int
	}{
		{"empty", 0, 0, 0, 256, 1000, 64},
		{"window", 250, 0, 0, 256, 1000, 6},
		{"window full", 256, 0, 0, 256, 1000, 0},
		{"commit", 10, 1000, 0, 256, 1000, 64},
		{"commit bound", 10, 1240, 0, 256, 1000, 6},
		{"commit full", 10, 1246, 0, 256, 1000, 0},
		{"committed", 10, 1246, 1000, 256, 1000, 64},
		{"window of one", 0, 0, 0, 1, 0, 1},
	} {
		p := &partition{next: -1, committed: -1, every: int64(c.every), done: int64(c.done), doneCommitted: int64(c.committed)}
		for i := range c.pending {
			p.add(int64(-1 - i))
		}
		if n := p.reserve(jobs, c.window); n != c.want {
			t.Errorf("%s: reserve took %d, want %d", c.name, n, c.want)
		}
		if n := len(p.pending) - c.pending; n != c.want {
			t.Errorf("%s: %d offsets added, want %d", c.name, n, c.want)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{Brokers: []string{"localhost"}}
	c, err := ok.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if c.Brokers[0] != "localhost:9092" || c.ClientID != "busway" || c.CommitInterval != time.Second || c.Acks != AcksAll {
		t.Errorf("defaults not applied: %+v", c.Config)
	}
	for name, cfg := range map[string]Config{
		"no brokers":        {},
		"empty broker":      {Brokers: []string{" "}},
		"bad port":          {Brokers: []string{"h:x"}},
		"bad mechanism":     {Brokers: []string{"h"}, SASL: SASL{Mechanism: "GSSAPI", Username: "u"}},
		"creds without":     {Brokers: []string{"h"}, SASL: SASL{Username: "u"}},
		"mechanism no user": {Brokers: []string{"h"}, SASL: SASL{Mechanism: "PLAIN"}},
		"bad compression":   {Brokers: []string{"h"}, Compression: "brotli"},
		"bad acks":          {Brokers: []string{"h"}, Acks: 7},
		"negative parts":    {Brokers: []string{"h"}, Topics: Provisioning{Partitions: -1}},
		"parts > int32":     {Brokers: []string{"h"}, Topics: Provisioning{Partitions: math.MaxInt32 + 1}},
		"replicas > int16":  {Brokers: []string{"h"}, Topics: Provisioning{ReplicationFactor: math.MaxInt16 + 1}},
		"fetch > int32":     {Brokers: []string{"h"}, FetchMaxBytes: math.MaxInt32 + 1},
		"negative interval": {Brokers: []string{"h"}, CommitInterval: -time.Second},
		"backoff order":     {Brokers: []string{"h"}, RetryBackoff: time.Minute, RetryBackoffMax: time.Second},
		"heartbeat>session": {Brokers: []string{"h"}, HeartbeatInterval: time.Minute},
		"drain>=rebalance":  {Brokers: []string{"h"}, DrainTimeout: time.Minute},
		"drain=rebalance":   {Brokers: []string{"h"}, DrainTimeout: 5 * time.Second, RebalanceTimeout: 5 * time.Second},
		"attempts -2":       {Brokers: []string{"h"}, MaxAttempts: -2},
	} {
		_, err := New(context.Background(), cfg)
		if !errors.Is(err, transport.ErrInvalidOptions) {
			t.Errorf("%s: error %v, want ErrInvalidOptions", name, err)
		} else if strings.HasPrefix(name, "drain") && (!strings.Contains(err.Error(), "DrainTimeout") || !strings.Contains(err.Error(), "RebalanceTimeout")) {
			t.Errorf("%s: error %q does not name DrainTimeout and RebalanceTimeout", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestConfigFromURL(t *testing.T) {
	u, _ := url.Parse("kafka://alice:s3cret@h1,h2:9093?client_id=svc&partitions=6&replication_factor=3&acks=leader" +
		"&compression=zstd&sasl=scram-sha-512&tls=true&commit_interval=2s&commit_every=77&max_attempts=3&create_topics=false&retry_backoff=50ms")
	cfg, err := ConfigFromURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Brokers, ",") != "h1,h2:9093" || cfg.ClientID != "svc" || cfg.Topics.Partitions != 6 ||
		cfg.Topics.ReplicationFactor != 3 || cfg.Acks != AcksLeader || cfg.Compression != "zstd" ||
		cfg.SASL != (SASL{"SCRAM-SHA-512", "alice", "s3cret"}) || cfg.TLS == nil || cfg.CommitInterval != 2*time.Second || cfg.CommitEvery != 77 || cfg.MaxAttempts != 3 ||
		!cfg.Topics.Disable || cfg.RetryBackoff != 50*time.Millisecond {
		t.Errorf("parsed %+v", cfg)
	}

	var mux transport.Mux
	if err := mux.Register(Scheme, Opener()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ url, names string }{
		{"kafka://h:9092?colour=blue", `"colour"`},
		{"kafka://h:9092?acks=most", `"acks"`},
		{"kafka://h:9092?commit_interval=soon", `"commit_interval"`},
		{"kafka://h:9092?partitions=three", `"partitions"`},
		{"kafka://h:9092?sasl=plain", `"sasl"`},
		{"kafka://u:p@h:9092", `"sasl"`},
		{"kafka://h:9092?sasl=kerberos", `"sasl"`},
		{"kafka://h:9092?compression=brotli", `"compression"`},
		{"kafka://", "host"},
		{"kafka://h:9092/path", "path"},
		{"kafka://h:9092?partitions=-2", "Partitions"},
		{"kafka://h:9092?partitions=99999999999", "Partitions"},
	} {
		_, err := mux.Open(context.Background(), tc.url)
		if !errors.Is(err, transport.ErrInvalidURL) && !errors.Is(err, transport.ErrInvalidOptions) {
			t.Errorf("%s: error %v, want ErrInvalidURL", tc.url, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.names) {
			t.Errorf("%s: error %q does not name %s", tc.url, err, tc.names)
		}
		if strings.Contains(err.Error(), "p@") {
			t.Errorf("%s: error %q shows the password", tc.url, err)
		}
	}
}

// The round-robin counter of keyless publishes wraps; past 2^31 its value
// does not fit a 32-bit int, which must not make the partition negative.
func TestKeylessPartitionWhenCounterIsLarge(t *testing.T) {
	c := newCluster(t)
	tr := open(t, testConfig(c.ListenAddrs()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range []uint32{1<<31 - 1, 1<<32 - 2, 1<<32 - 1} {
		tr.rr.Store(n)
		if err := tr.Publish(ctx, "rr-wrap", &transport.Message{Body: []byte("x")}); err != nil {
			t.Fatalf("Publish with the counter at %d: %v", n, err)
		}
	}
}

// TestURLOpenerDefaults: URLOpener.Config holds the defaults that a URL's
// options override; its Logger and TLS reach the Config, TLS only where
// the URL says nothing about TLS.
func TestURLOpenerDefaults(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	own := &tls.Config{ServerName: "own", MinVersion: tls.VersionTLS12}
	o := &URLOpener{Logger: log, TLS: own, Config: Config{
		Brokers: []string{"ignored:1"}, ClientID: "base", RetryBackoff: time.Second, RetryBackoffMax: time.Minute,
		Acks: AcksLeader, Topics: Provisioning{Disable: true, Partitions: 4}, Compression: "gzip",
		SASL: SASL{Mechanism: "PLAIN"},
	}}
	parse := func(raw string) Config {
		t.Helper()
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := o.config(u)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		return cfg
	}
	c := parse("kafka://alice:pw@h1,h2:9093?retry_backoff=2s")
	if len(c.Brokers) != 2 || c.Brokers[0] != "h1" || c.ClientID != "base" || c.RetryBackoff != 2*time.Second ||
		c.RetryBackoffMax != time.Minute || c.Acks != AcksLeader || !c.Topics.Disable || c.Topics.Partitions != 4 ||
		c.Compression != "gzip" || c.SASL != (SASL{"PLAIN", "alice", "pw"}) || c.Logger != log || c.TLS != own {
		t.Errorf("defaults not kept or URL not applied: %+v", c)
	}
	c = parse("kafka://bob:x@h?acks=all&create_topics=true&compression=none&client_id=url&tls=false")
	if c.Acks != AcksAll || c.Topics.Disable || c.Compression != "none" || c.ClientID != "url" || c.TLS != nil {
		t.Errorf("URL options did not override the defaults: %+v", c)
	}
	if c := parse("kafka://bob:x@h?tls=true"); c.TLS == own || c.TLS == nil {
		t.Errorf("tls=true in the URL: TLS %v, want the URL's own", c.TLS)
	}
	// The zero opener is Opener's: a URL without options is the zero Config but for its brokers.
	zero, err := (&URLOpener{}).config(&url.URL{Scheme: Scheme, Host: "h"})
	if err != nil || zero.ClientID != "" || zero.Logger != nil || zero.TLS != nil || zero.Acks != AcksAll {
		t.Errorf("zero URLOpener: %+v, %v", zero, err)
	}
}

func TestOpenerConformance(t *testing.T) {
	transporttest.CheckOpener(t, transporttest.OpenerHarness{Opener: &URLOpener{}, Scheme: Scheme, Host: "127.0.0.1:9092",
		Bad: []transporttest.BadURL{
			{URL: "kafka://a:1,,b:2", Part: "host"},
			{URL: "kafka://u:s3cretpw@h:9092", Part: `"sasl"`},
			{URL: "kafka://h?acks=some", Part: `"acks"`},
			{URL: "kafka://h?tls_insecure_skip_verify=true", Part: `"tls_insecure_skip_verify"`},
		}})
}

// TestOpenerNilOnError: a URL that parses but whose brokers cannot be
// reached gives an error and a nil Transport (before OpenConfig, a non-nil
// interface holding a nil *Transport).
func TestOpenerNilOnError(t *testing.T) {
	u, _ := url.Parse("kafka://127.0.0.1:1?dial_timeout=500ms")
	tr, err := (&URLOpener{}).OpenTransport(t.Context(), u)
	if err == nil || tr != nil {
		t.Fatalf("OpenTransport to a closed port: %#v, %v; want a nil Transport and an error", tr, err)
	}
}

// finish marks off finished for the commit position, as end does for a
// handled message.
func (p *partition) finish(off int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finishLocked(off)
}
