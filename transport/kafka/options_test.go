package kafka

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// Every compression codec and acks level publishes messages that a
// subscriber reads back intact.
func TestCompressionAndAcks(t *testing.T) {
	c := newCluster(t)
	for _, tc := range []struct {
		compression string
		acks        Acks
	}{
		{"gzip", AcksAll}, {"snappy", AcksAll}, {"lz4", AcksLeader}, {"zstd", AcksAll}, {"none", AcksNone},
	} {
		t.Run(fmt.Sprintf("%s-acks-%s", tc.compression, tc.acks), func(t *testing.T) {
			cfg := testConfig(c.ListenAddrs())
			cfg.Compression, cfg.Acks = tc.compression, tc.acks
			tr := open(t, cfg)
			topic := transporttest.UniqueTopic(t)
			var mu sync.Mutex
			got := make(map[string]string)
			sub, err := tr.Subscribe(t.Context(), topic, func(_ context.Context, m *transport.Message) error {
				mu.Lock()
				got[m.ID] = string(m.Body)
				mu.Unlock()
				return nil
			}, transport.SubscribeOptions{Group: transporttest.UniqueGroup(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close(context.Background())
			var msgs []*transport.Message
			for i := range 50 {
				msgs = append(msgs, &transport.Message{ID: fmt.Sprint(i), Key: fmt.Sprint("k", i%7), Body: []byte(fmt.Sprint("body ", i, " compressible compressible compressible"))})
			}
			if err := tr.Publish(t.Context(), topic, msgs...); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, 20*time.Second, "all 50 delivered", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) == 50
			})
			for _, m := range msgs {
				if got[m.ID] != string(m.Body) {
					t.Errorf("%s: body %q, want %q", m.ID, got[m.ID], m.Body)
				}
			}
		})
	}
}
