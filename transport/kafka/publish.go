package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
)

// Publish sends msgs to topic and returns once the brokers acknowledged all
// of them (Config.Acks; by default every in-sync replica). Records are keyed
// by Message.Key and placed with the murmur2 partitioner of the Java client;
// keyless messages of one call go to one partition, and the next call's to
// the next. Message.Header travels as record headers unchanged (the
// canonical CloudEvents names are the Kafka binding's, "ce_id", ...). The
// ID travels as Header["ce_id"] when that holds it, else in a header
// "busway-id" that is removed again on delivery.
//
// All messages for one partition go in one produce request (split only at
// Config.MaxMessageBytes), and the partitions' requests run concurrently:
// Publish does not wait for a batch timer. When some partitions fail, the
// error is a *transport.PublishError listing the failed messages; the others
// were accepted.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if err := transport.ValidatePublish(topic, msgs); err != nil {
		return err
	}
	if t.isClosed() {
		return errClosed("publish")
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var failures []transport.MessageError
	for i, m := range msgs {
		if n := recordSize(m); n > t.cfg.MaxMessageBytes {
			failures = append(failures, transport.MessageError{Index: i, ID: m.ID, Err: fmt.Errorf(
				"%w: record of %d bytes exceeds MaxMessageBytes %d", transport.ErrMessageTooLarge, n, t.cfg.MaxMessageBytes)})
		}
	}
	if len(failures) > 0 {
		return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: failures}
	}
	ids, err := t.partitions(ctx, topic)
	if err != nil {
		return err
	}
	np := len(ids)

	// Group the messages by partition, keeping their order.
	now := time.Now()
	keyless := -1
	byPart := make(map[int][]int, min(np, len(msgs)))
	parts := make([]int, 0, min(np, len(msgs)))
	for i, m := range msgs {
		var p int
		if m.Key == "" {
			if keyless < 0 {
				keyless = int(t.rr.Add(1)) % np
			}
			p = keyless
		} else {
			p = t.balancer.Balance(kafkago.Message{Key: []byte(m.Key)}, ids...)
		}
		if _, ok := byPart[p]; !ok {
			parts = append(parts, p)
		}
		byPart[p] = append(byPart[p], i)
	}

	if len(parts) == 1 {
		failures = t.produce(ctx, topic, parts[0], msgs, byPart[parts[0]], now)
	} else {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, p := range parts {
			wg.Go(func() {
				f := t.produce(ctx, topic, p, msgs, byPart[p], now)
				if len(f) > 0 {
					mu.Lock()
					failures = append(failures, f...)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	if len(failures) == 0 {
		return nil
	}
	if ctx.Err() != nil && len(failures) == len(msgs) {
		return ctx.Err()
	}
	for _, f := range failures {
		if errors.Is(f.Err, transport.ErrTopicNotFound) {
			t.forget(topic) // deleted or re-created: look it up again next time
			break
		}
	}
	sortFailures(failures)
	return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: failures}
}

// produce sends msgs[idx...] to one partition, in requests of at most
// MaxMessageBytes, retrying retriable errors.
func (t *Transport) produce(ctx context.Context, topic string, partition int, msgs []*transport.Message, idx []int, now time.Time) []transport.MessageError {
	var failures []transport.MessageError
	for start := 0; start < len(idx); {
		end, size := start, 0
		for end < len(idx) {
			n := recordSize(msgs[idx[end]])
			if end > start && size+n > t.cfg.MaxMessageBytes {
				break
			}
			size += n
			end++
		}
		chunk := idx[start:end]
		if err := t.produceChunk(ctx, topic, partition, msgs, chunk, now); err != nil {
			for _, i := range chunk {
				failures = append(failures, transport.MessageError{Index: i, ID: msgs[i].ID,
					Err: fmt.Errorf("partition %d: %w", partition, err)})
			}
		}
		start = end
	}
	return failures
}

func (t *Transport) produceChunk(ctx context.Context, topic string, partition int, msgs []*transport.Message, chunk []int, now time.Time) error {
	records := make([]kafkago.Record, len(chunk))
	for j, i := range chunk {
		records[j] = toRecord(msgs[i], now)
	}
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		rctx, cancel := t.withTimeout(ctx)
		res, err := t.client.Produce(rctx, &kafkago.ProduceRequest{
			Topic:        topic,
			Partition:    partition,
			RequiredAcks: t.cfg.Acks.required(),
			Records:      kafkago.NewRecordReader(records...),
			Compression:  t.cfg.compression,
		})
		cancel()
		if err == nil && res != nil {
			err = res.Error
			if err == nil {
				for _, e := range res.RecordErrors {
					err = e
					break
				}
			}
		}
		if err == nil {
			return nil
		}
		err = classify(ctx, err)
		if ctx.Err() != nil || attempt >= t.cfg.PublishRetries || !retriable(err) {
			return err
		}
		if t.isClosed() {
			return errors.Join(err, transport.ErrClosed)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff *= 2
	}
}

func toRecord(m *transport.Message, now time.Time) kafkago.Record {
	r := kafkago.Record{Time: now, Value: kafkago.NewBytes(m.Body)}
	if m.Key != "" {
		r.Key = kafkago.NewBytes([]byte(m.Key))
	}
	n := len(m.Header)
	addID := m.ID != "" && m.Header[transport.HeaderID] != m.ID
	if addID {
		n++
	}
	if n > 0 {
		r.Headers = make([]kafkago.Header, 0, n)
		for k, v := range m.Header {
			r.Headers = append(r.Headers, kafkago.Header{Key: k, Value: []byte(v)})
		}
		if addID {
			r.Headers = append(r.Headers, kafkago.Header{Key: idHeader, Value: []byte(m.ID)})
		}
	}
	return r
}

// idHeader carries Message.ID when Header["ce_id"] does not already hold
// it (busway's typed API always sets ce_id = ID, so it rarely travels). It
// is removed from Header on delivery.
const idHeader = "busway-id"

// recordSize estimates a record's size in a batch: its fields plus the
// varints and attributes around them.
func recordSize(m *transport.Message) int {
	n := 21 + len(m.Key) + len(m.Body)
	for k, v := range m.Header {
		n += 10 + len(k) + len(v)
	}
	if m.ID != "" {
		n += 10 + len(idHeader) + len(m.ID)
	}
	return n
}

func sortFailures(f []transport.MessageError) {
	for i := 1; i < len(f); i++ {
		for j := i; j > 0 && f[j].Index < f[j-1].Index; j-- {
			f[j], f[j-1] = f[j-1], f[j]
		}
	}
}
