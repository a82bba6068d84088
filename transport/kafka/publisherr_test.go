package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/transporttest"
)

// failPartition makes the cluster refuse, with a retriable
// NOT_LEADER_FOR_PARTITION, every produce request holding partition of
// topic (so every partition of its leader's request fails). It returns a
// channel closed at the first refusal.
func failPartition(c *kfake.Cluster, topic string, partition int32) <-chan struct{} {
	first := make(chan struct{})
	refused := false
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.ProduceRequest)
		hit := false
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				hit = hit || (rt.Topic == topic && rp.Partition == partition)
			}
		}
		if !hit {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.NotLeaderForPartition.Code
				sp.BaseOffset = -1
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		if !refused {
			refused = true
			close(first)
		}
		return resp, nil, true
	})
	return first
}

// partlyFailedPublish publishes one message to each partition of a new
// topic while the leader of partition 0 refuses its requests, calls
// interrupt at the first refusal, and checks that Publish reports exactly
// the refused messages in a *transport.PublishError whose errors wrap want.
func partlyFailedPublish(t *testing.T, disableTopics bool, interrupt func(c *kfake.Cluster, topic string, cancel context.CancelFunc, accepted func()), want error) {
	c := newCluster(t)
	cfg := testConfig(c.ListenAddrs())
	cfg.PublishRetries = 30 // the backoff, doubling from 50ms, outlasts the test
	cfg.Topics.Disable = disableTopics
	tr := open(t, cfg)
	topic := transporttest.UniqueTopic(t)
	if err := tr.createTopic(t.Context(), topic); err != nil {
		t.Fatal(err)
	}
	ids, err := tr.partitions(t.Context(), topic)
	if err != nil || len(ids) != 3 {
		t.Fatalf("partitions %v, %v", ids, err)
	}
	failLeader := c.LeaderFor(topic, 0)
	var msgs []*transport.Message
	var wantFailed, acceptedParts []int
	var balancer kafkago.Murmur2Balancer
	covered := make(map[int]bool)
	for i := 0; len(covered) < 3; i++ {
		key := fmt.Sprintf("k%d", i)
		p := balancer.Balance(kafkago.Message{Key: []byte(key)}, ids...)
		if covered[p] {
			continue
		}
		covered[p] = true
		if c.LeaderFor(topic, int32(p)) == failLeader {
			wantFailed = append(wantFailed, len(msgs))
		} else {
			acceptedParts = append(acceptedParts, p)
		}
		msgs = append(msgs, &transport.Message{ID: fmt.Sprintf("m-p%d", p), Key: key, Body: []byte("x")})
	}
	if len(wantFailed) == len(msgs) {
		t.Skip("every partition has the same leader: nothing would be accepted")
	}
	first := failPartition(c, topic, 0)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// accepted waits until the other leaders stored their messages. (It
	// runs on another goroutine than the test's: no t.Fatal.)
	accepted := func() {
		stored := func() bool {
			var reqs []kafkago.OffsetRequest
			for _, p := range acceptedParts {
				reqs = append(reqs, kafkago.LastOffsetOf(p))
			}
			res, err := tr.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
			if err != nil {
				return false
			}
			for _, p := range res.Topics[topic] {
				if p.Error != nil || p.LastOffset < 1 {
					return false
				}
			}
			return len(res.Topics[topic]) == len(acceptedParts)
		}
		for deadline := time.Now().Add(30 * time.Second); !stored(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Error("the other partitions' messages were not stored")
				return
			}
		}
	}
	go func() {
		select {
		case <-first:
			interrupt(c, topic, cancel, accepted)
		case <-ctx.Done():
		}
	}()
	err = tr.Publish(ctx, topic, msgs...)
	var pe *transport.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish: %v (%T), want a *transport.PublishError", err, err)
	}
	t.Logf("Publish: %v", err)
	var failed []int
	for _, f := range pe.Failures {
		failed = append(failed, f.Index)
		if !errors.Is(f.Err, want) {
			t.Errorf("message %d (%s): %v, want an error wrapping %v", f.Index, f.ID, f.Err, want)
		}
		if !errors.Is(f.Err, transport.ErrUnavailable) {
			t.Errorf("message %d (%s): %v does not wrap the broker's refusal", f.Index, f.ID, f.Err)
		}
	}
	if !slices.Equal(failed, wantFailed) || pe.Total != len(msgs) {
		t.Errorf("failed messages %v of %d, want %v of %d (the others were accepted)", failed, pe.Total, wantFailed, len(msgs))
	}
}

// Defect 5: the context ends while refused partitions wait for their retry.
func TestPublishPartlyAcceptedContextEnds(t *testing.T) {
	partlyFailedPublish(t, false, func(_ *kfake.Cluster, _ string, cancel context.CancelFunc, _ func()) {
		// The retries back off 50ms, 100ms, ... doubling: one second in,
		// Publish is almost surely asleep between two of them.
		time.Sleep(time.Second)
		cancel()
	}, context.Canceled)
}

// Defect 5: the metadata lookup before a retry fails (the topic was
// deleted, and creating topics is disabled).
func TestPublishPartlyAcceptedMetadataFails(t *testing.T) {
	partlyFailedPublish(t, true, func(c *kfake.Cluster, topic string, _ context.CancelFunc, accepted func()) {
		accepted()
		if err := c.DeleteTopic(topic); err != nil {
			t.Errorf("DeleteTopic: %v", err)
		}
	}, transport.ErrTopicNotFound)
}
