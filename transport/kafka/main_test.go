package kafka

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/busway/busway/internal/fdcheck"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

func TestMain(m *testing.M) {
	fdcheck.Main(m)
}

// newCluster starts an in-process kfake cluster for the test, with topics
// created with 3 partitions unless opts say otherwise.
func newCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{
		kfake.NumBrokers(3),
		kfake.DefaultNumPartitions(3),
		kfake.GroupMinSessionTimeout(500 * time.Millisecond),
	}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// testConfig is a Config tuned for fast tests: short heartbeats, commits and
// waits.
func testConfig(brokers []string) Config {
	return Config{
		Brokers:           brokers,
		Topics:            Provisioning{Partitions: 3},
		CommitInterval:    100 * time.Millisecond,
		RetryBackoff:      20 * time.Millisecond,
		RetryBackoffMax:   500 * time.Millisecond,
		DrainTimeout:      3 * time.Second,
		SessionTimeout:    3 * time.Second,
		HeartbeatInterval: 100 * time.Millisecond,
		RebalanceTimeout:  5 * time.Second,
		FetchMaxWait:      100 * time.Millisecond,
		DialTimeout:       3 * time.Second,
		RequestTimeout:    10 * time.Second,
	}
}

func open(t testing.TB, cfg Config) *Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

// realBrokers returns the brokers of BUS_TEST_KAFKA_BROKERS, or nil.
func realBrokers() []string {
	v := strings.TrimSpace(os.Getenv("BUS_TEST_KAFKA_BROKERS"))
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

func TestConformance(t *testing.T) {
	c := newCluster(t)
	transporttest.Run(t, transporttest.Harness{
		Open: func(t *testing.T) transport.Transport {
			tr, err := New(t.Context(), testConfig(c.ListenAddrs()))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			return tr
		},
		OpenDrain: func(t *testing.T, d time.Duration) transport.Transport {
			cfg := testConfig(c.ListenAddrs())
			cfg.DrainTimeout = d
			tr, err := New(t.Context(), cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			return tr
		},
		Caps:    transporttest.Capabilities{Durable: true, CountsAttempts: true},
		Timeout: 30 * time.Second,
	})
}

func TestConformanceRealCluster(t *testing.T) {
	brokers := realBrokers()
	if brokers == nil {
		t.Skip("BUS_TEST_KAFKA_BROKERS is not set: no real Kafka cluster to test against")
	}
	transporttest.Run(t, transporttest.Harness{
		Open: func(t *testing.T) transport.Transport {
			cfg := testConfig(brokers)
			cfg.SessionTimeout = 10 * time.Second
			cfg.RebalanceTimeout = 10 * time.Second
			tr, err := New(t.Context(), cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			return tr
		},
		OpenDrain: func(t *testing.T, d time.Duration) transport.Transport {
			cfg := testConfig(brokers)
			cfg.SessionTimeout = 10 * time.Second
			cfg.RebalanceTimeout = 10 * time.Second
			cfg.DrainTimeout = d
			tr, err := New(t.Context(), cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			return tr
		},
		Caps:    transporttest.Capabilities{Durable: true, CountsAttempts: true},
		Timeout: 60 * time.Second,
	})
}
