package nats_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
	"github.com/busway/busway/transport/transporttest"
)

// natsCluster is three embedded nats-servers clustered on 127.0.0.1 (random
// client and route ports), each with its own JetStream store.
type natsCluster struct {
	t       testing.TB
	servers []*server.Server
}

func newNATSCluster(t testing.TB) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t}
	// Route ports picked up front, so that each server can list all three.
	var routes []*url.URL
	var ports []int
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		routes = append(routes, &url.URL{Scheme: "nats", Host: l.Addr().String()})
		l.Close()
	}
	for i := range 3 {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
			Cluster:    server.ClusterOpts{Name: "busway", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
			MaxPayload: 2 << 20, // the suite's 1 MiB body with its headers
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		c.servers = append(c.servers, s)
	}
	for i, s := range c.servers {
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatalf("server %d not ready", i+1)
		}
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	// Wait for the routes and a JetStream meta leader.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := true
		for _, s := range c.servers {
			if s.NumRoutes() < 2 || !s.JetStreamEnabled() {
				ready = false
			}
		}
		leader := false
		for _, s := range c.servers {
			leader = leader || s.JetStreamIsLeader()
		}
		if ready && leader {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal("the three servers did not form a JetStream cluster within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *natsCluster) urls() []string {
	var u []string
	for _, s := range c.servers {
		u = append(u, s.ClientURL())
	}
	return u
}

// config is a transport config on the cluster with an R3 file stream of
// its own.
func (c *natsCluster) config(t testing.TB) busnats.Config {
	stream, prefix := uniqueStream(t)
	return busnats.Config{Servers: c.urls(), Stream: stream, SubjectPrefix: prefix, Replicas: 3,
		NakDelays: []time.Duration{20 * time.Millisecond}, AckWait: 5 * time.Second}
}

// openCluster opens a transport, retrying while the cluster is still
// electing (stream creation needs a meta leader).
func openCluster(t testing.TB, cfg busnats.Config) *busnats.Transport {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tr, err := busnats.New(ctx, cfg)
		cancel()
		if err == nil {
			return tr
		}
		if time.Now().After(deadline) {
			t.Fatalf("New on the cluster: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestConformanceCluster runs the conformance suite on three clustered
// nats-servers with a replicated (R3) stream.
func TestConformanceCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-server cluster")
	}
	c := newNATSCluster(t)
	transporttest.Run(t, transporttest.Harness{
		Open: func(t *testing.T) transport.Transport { return openCluster(t, c.config(t)) },
		Caps: transporttest.Capabilities{Durable: true, CountsAttempts: true},
		// A replicated publish waits for two of three servers' writes.
		Timeout: 45 * time.Second,
	})
}

// TestClusterLeaderLoss kills the stream's leader mid-stream (publishing
// and consuming): every message whose Publish returned nil is handled, and
// delivery resumes on the new leader without any action.
func TestClusterLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-server cluster")
	}
	c := newNATSCluster(t)
	cfg := c.config(t)
	tr := openCluster(t, cfg)
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	topic := transporttest.UniqueTopic(t)

	var mu sync.Mutex
	handled := map[string]bool{}
	var lastHandled time.Time
	sub, err := tr.Subscribe(ctx, topic, func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		handled[m.ID] = true
		lastHandled = time.Now()
		mu.Unlock()
		return nil
	}, transport.SubscribeOptions{Group: "survivors", Concurrency: 4, StartFrom: transport.StartEarliest})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())

	const n = 3000
	var acked []string
	var failed int
	var firstErr error
	killed := false
	var killedAt time.Time
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("r3-%05d", i)
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		err := tr.Publish(pctx, topic, &transport.Message{ID: id, Key: fmt.Sprintf("k%d", i%20), Body: []byte(id)})
		pcancel()
		if err != nil {
			failed++ // not acknowledged: the caller knows; not counted as sent
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		acked = append(acked, id)
		if !killed && i == n/3 {
			si, err := tr.JetStream().Stream(ctx, tr.Stream())
			if err != nil {
				t.Fatal(err)
			}
			info := si.CachedInfo()
			if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
				t.Fatalf("stream is not replicated on three servers: %+v", info.Cluster)
			}
			for _, s := range c.servers {
				if s.Name() == info.Cluster.Leader {
					t.Logf("killing the stream leader %s after %d acknowledged publishes", s.Name(), len(acked))
					s.Shutdown()
					killed, killedAt = true, time.Now()
				}
			}
			if !killed {
				t.Fatalf("leader %q is none of the servers", info.Cluster.Leader)
			}
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		missing := 0
		for _, id := range acked {
			if !handled[id] {
				missing++
			}
		}
		last := lastHandled
		mu.Unlock()
		if missing == 0 {
			t.Logf("%d acknowledged messages all handled (%d publishes failed during the election: %v); last handled %v after the kill",
				len(acked), failed, firstErr, last.Sub(killedAt).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never handled after the leader was killed", missing, len(acked))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if failed > n/2 {
		t.Errorf("%d of %d publishes failed: the cluster did not recover", failed, n)
	}
}
