package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// Publish sends msgs to topic and returns once the brokers acknowledged all
// of them (Config.Acks; by default every in-sync replica). Records are keyed
// by Message.Key and placed with the murmur2 partitioner of the Java client;
// keyless messages of one call go to one partition, and the next call's to
// the next. Message.Header travels as record headers unchanged (the
// canonical CloudEvents names are the Kafka binding's, "ce_id", ...). The
// ID travels as Header["ce_id"] when that holds it, else in a header
// "busway-id" that is removed again on delivery; a message whose own
// headers hold that name fails with transport.ErrInvalidMessage (it would
// be lost, or taken for the ID).
//
// All messages for partitions led by one broker go in one produce request
// (a partition's split only at Config.MaxMessageBytes), and the brokers'
// requests run concurrently: Publish does not wait for a batch timer.
// Retriable broker errors are retried (Config.PublishRetries) with fresh
// metadata. When some partitions fail, the error is a
// *transport.PublishError listing the failed messages; the others were
// accepted. That holds also when ctx ends, or the metadata lookup fails,
// while failed partitions wait to be retried: their messages fail with that
// error (wrapping the broker's error too). Only when every message failed
// and ctx ended is the error ctx.Err() as it is. A message whose record
// batch alone, as sent (compressed), is over Config.MaxMessageBytes fails
// with transport.ErrMessageTooLarge before it is sent (the call's other
// messages are sent); a
// batch the topic's smaller limit refuses is split, down to the message
// that is too large alone, which fails with transport.ErrMessageTooLarge.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if err := transport.ValidatePublish(topic, msgs); err != nil {
		return err
	}
	if t.closer.Closed() {
		return errClosed("publish")
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// The broker limits the record batch as sent (compressed, with its
	// header): a message that cannot fit a batch of its own fails. The
	// bound is cheap and never under the real size; only a message near or
	// over the limit is encoded to learn its real size.
	now := time.Now()
	var failures []transport.MessageError
	for i, m := range msgs {
		if v, ok := m.Header[idHeader]; ok {
			failures = append(failures, transport.MessageError{Index: i, ID: m.ID, Err: fmt.Errorf(
				"%w: header %s=%q: the name is reserved, Kafka carries Message.ID in it", transport.ErrInvalidMessage, idHeader, v)})
			continue
		}
		if batchHeader+recordBound(m) <= t.cfg.MaxMessageBytes {
			continue
		}
		n := t.batchSize(msgs[i:i+1], now)
		if n > t.cfg.MaxMessageBytes {
			failures = append(failures, transport.MessageError{Index: i, ID: m.ID, Err: fmt.Errorf(
				"%w: a record batch holding it alone is %d bytes as sent (compression %s), over MaxMessageBytes %d",
				transport.ErrMessageTooLarge, n, t.compressionName(), t.cfg.MaxMessageBytes)})
		}
	}
	// The others are sent: a *PublishError says that what it does not list
	// was accepted.
	var refused []bool
	if len(failures) > 0 {
		if len(failures) == len(msgs) {
			return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: failures}
		}
		refused = make([]bool, len(msgs))
		for _, f := range failures {
			refused[f.Index] = true
		}
	}
	ti, err := t.topic(ctx, topic)
	if err != nil {
		return err
	}

	// Group the messages by partition, keeping their order, and cut each
	// partition's into chunks of at most MaxMessageBytes (by recordBound:
	// a message over it alone is a chunk of its own, checked above).
	np := len(ti.ids)
	keyless := -1
	byPart := make(map[int][]int, min(np, len(msgs)))
	var order []int
	for i, m := range msgs {
		if refused != nil && refused[i] {
			continue
		}
		var p int
		if m.Key == "" {
			if keyless < 0 {
				keyless = int(t.rr.Add(1) % uint32(np)) // in uint32: int may be 32 bits
			}
			p = keyless
		} else {
			p = t.balancer.Balance(kafkago.Message{Key: []byte(m.Key)}, ti.ids...)
		}
		if _, ok := byPart[p]; !ok {
			order = append(order, p)
		}
		byPart[p] = append(byPart[p], i)
	}
	var pending []*chunk
	for _, p := range order {
		idx := byPart[p]
		for start := 0; start < len(idx); {
			end, size := start, batchHeader
			for end < len(idx) {
				n := recordBound(msgs[idx[end]])
				if end > start && size+n > t.cfg.MaxMessageBytes {
					break
				}
				size += n
				end++
			}
			pending = append(pending, &chunk{partition: p, idx: idx[start:end]})
			start = end
		}
	}

	for attempt := 0; ; attempt++ {
		pending = t.send(ctx, topic, ti.leaders, pending, msgs, now)
		var retry []*chunk
		for _, c := range pending {
			switch {
			case c.err == nil:
			case t.cfg.produce.Retries(attempt+1) && ctx.Err() == nil && retriable(c.err) && !t.closer.Closed():
				retry = append(retry, c)
			default:
				for _, i := range c.idx {
					failures = append(failures, transport.MessageError{Index: i, ID: msgs[i].ID,
						Err: fmt.Errorf("partition %d: %w", c.partition, c.err)})
				}
			}
		}
		if len(retry) == 0 {
			break
		}
		// The other partitions' messages were accepted: whatever ends the
		// retries fails only the messages still to be retried.
		giveUp := func(err error) {
			for _, c := range retry {
				for _, i := range c.idx {
					failures = append(failures, transport.MessageError{Index: i, ID: msgs[i].ID,
						Err: fmt.Errorf("partition %d: %w (while retrying after: %w)", c.partition, err, c.err)})
				}
			}
		}
		t.forget(topic) // leaders may have moved
		if err := backoff.Sleep(ctx, t.cfg.produce.Delay(attempt+1)); err != nil {
			giveUp(err)
			break
		}
		if ti, err = t.topic(ctx, topic); err != nil {
			giveUp(err)
			break
		}
		for _, c := range retry {
			c.err = nil
		}
		pending = retry
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

// chunk is up to MaxMessageBytes of one partition's messages of a Publish.
type chunk struct {
	partition int
	idx       []int // message indexes, in order
	err       error
}

// send produces the chunks: one request per leader broker and round, a
// round holding at most one chunk per partition, the leaders' requests
// concurrently. It returns the chunks as sent (a chunk the broker refused
// as too large is split), each with its err. After a chunk fails, its
// partition's later chunks are not sent (they would overtake it), unless
// it is a single message the broker refused as too large: that one can
// never be accepted, so nothing overtakes it.
func (t *Transport) send(ctx context.Context, topic string, leaders []int32, chunks []*chunk, msgs []*transport.Message, now time.Time) []*chunk {
	byLeader := make(map[int32][]*chunk, 1)
	var order []int32
	for _, c := range chunks {
		l := int32(-1)
		if c.partition < len(leaders) {
			l = leaders[c.partition]
		}
		if _, ok := byLeader[l]; !ok {
			order = append(order, l)
		}
		byLeader[l] = append(byLeader[l], c)
	}
	if len(order) == 1 {
		return t.sendToLeader(ctx, topic, byLeader[order[0]], msgs, now)
	}
	sent := make([][]*chunk, len(order))
	var wg sync.WaitGroup
	for i, l := range order {
		wg.Go(func() { sent[i] = t.sendToLeader(ctx, topic, byLeader[l], msgs, now) })
	}
	wg.Wait()
	return slices.Concat(sent...)
}

func (t *Transport) sendToLeader(ctx context.Context, topic string, chunks []*chunk, msgs []*transport.Message, now time.Time) []*chunk {
	failed := make(map[int]error)
	var done []*chunk
	for len(chunks) > 0 {
		var round, later []*chunk
		inRound := make(map[int]bool, len(chunks))
		for _, c := range chunks {
			switch {
			case failed[c.partition] != nil:
				c.err = failed[c.partition] // not sent: it would overtake the failed one
				done = append(done, c)
			case inRound[c.partition]:
				later = append(later, c)
			default:
				inRound[c.partition] = true
				round = append(round, c)
			}
		}
		var split []*chunk
		if len(round) > 0 {
			t.produceRound(ctx, topic, round, msgs, now)
			for _, c := range round {
				switch {
				case c.err == nil:
				case errors.Is(c.err, transport.ErrMessageTooLarge) && len(c.idx) > 1:
					// The topic's limit is below MaxMessageBytes: send the
					// halves (before the partition's later chunks), down to
					// single messages, as the Java producer splits a batch.
					h := len(c.idx) / 2
					split = append(split, &chunk{partition: c.partition, idx: c.idx[:h]}, &chunk{partition: c.partition, idx: c.idx[h:]})
					continue
				case errors.Is(c.err, transport.ErrMessageTooLarge):
				default:
					failed[c.partition] = c.err
				}
				done = append(done, c)
			}
		}
		chunks = append(split, later...)
	}
	return done
}

// produceRound sends one produce request for chunks of distinct partitions
// that share a leader.
func (t *Transport) produceRound(ctx context.Context, topic string, chunks []*chunk, msgs []*transport.Message, now time.Time) {
	parts := make([]produceAPI.RequestPartition, len(chunks))
	bufs := make([]*recordBufs, len(chunks))
	for k, c := range chunks {
		bufs[k] = recordBufsPool.Get().(*recordBufs)
		bufs[k].fill(msgs, c.idx, now)
		parts[k] = produceAPI.RequestPartition{
			Partition: int32(c.partition),
			RecordSet: protocol.RecordSet{
				Attributes: protocol.Attributes(t.cfg.compression) & 0x7,
				Records:    &bufs[k].reader,
			},
		}
	}
	rctx, cancel := t.withTimeout(ctx)
	defer cancel()
	timeout := int32(t.cfg.RequestTimeout / time.Millisecond)
	if dl, ok := rctx.Deadline(); ok {
		timeout = int32(max(time.Until(dl), time.Millisecond) / time.Millisecond)
	}
	res, err := t.kt.RoundTrip(rctx, t.addr, &produceAPI.Request{
		Acks:    int16(t.cfg.Acks.required()),
		Timeout: timeout,
		Topics:  []produceAPI.RequestTopic{{Topic: topic, Partitions: parts}},
	})
	if err != nil {
		// The request may still be being written (kafka-go's RoundTrip
		// returns at ctx's end, its connection's goroutine goes on): the
		// records' buffers are left to the collector.
		err = classify(ctx, err)
		for _, c := range chunks {
			c.err = err
		}
		return
	}
	// Written: the encoder is done with the records.
	for _, b := range bufs {
		b.release()
	}
	if t.cfg.Acks == AcksNone || res == nil {
		return
	}
	got := make(map[int32]error, len(chunks))
	for _, rt := range res.(*produceAPI.Response).Topics {
		for _, rp := range rt.Partitions {
			if rp.ErrorCode != 0 {
				err := error(kafkago.Error(rp.ErrorCode))
				if rp.ErrorMessage != "" {
					err = fmt.Errorf("%w: %s", err, rp.ErrorMessage)
				}
				got[rp.Partition] = classify(ctx, err)
			} else if len(rp.RecordErrors) > 0 {
				got[rp.Partition] = fmt.Errorf("record %d: %s", rp.RecordErrors[0].BatchIndex, rp.RecordErrors[0].BatchIndexErrorMessage)
			} else {
				got[rp.Partition] = nil
			}
		}
	}
	for _, c := range chunks {
		e, ok := got[int32(c.partition)]
		if !ok {
			e = fmt.Errorf("%w: no response for partition %d", transport.ErrUnavailable, c.partition)
		}
		c.err = e
	}
}

// recordBufs are the records of one partition's share of a produce
// request, reused by the next request once this one is written (a 100
// message Publish allocated ~290 bytes per message for them: the records,
// their fields and kafka-go's copy of the records in NewRecordReader).
type recordBufs struct {
	records []kafkago.Record
	fields  []field
	hdrs    []kafkago.Header
	vals    []byte
	reader  recordsReader
}

var recordBufsPool = sync.Pool{New: func() any { return new(recordBufs) }}

// maxPooledRecords bounds what a pooled recordBufs keeps.
const maxPooledRecords = 4096

// release clears b's references to the messages and puts it back in the
// pool.
func (b *recordBufs) release() {
	if len(b.records) > maxPooledRecords {
		return
	}
	clear(b.records)
	clear(b.fields)
	clear(b.hdrs)
	b.reader = recordsReader{}
	recordBufsPool.Put(b)
}

// recordsReader is kafka-go's RecordReader of records, without the copy
// of them NewRecordReader makes.
type recordsReader struct {
	records []kafkago.Record
	next    int
}

func (r *recordsReader) ReadRecord() (*kafkago.Record, error) {
	if r.next >= len(r.records) {
		return nil, io.EOF
	}
	r.next++
	return &r.records[r.next-1], nil
}

// toRecords are the records of msgs[idx[0]], msgs[idx[1]], ... (of every
// message of msgs when idx is nil), in recordBufs of their own.
func toRecords(msgs []*transport.Message, idx []int, now time.Time) []kafkago.Record {
	var b recordBufs
	b.fill(msgs, idx, now)
	return b.records
}

// fill sets b to the records of msgs[idx[0]], msgs[idx[1]], ... (of every
// message when idx is nil), for one encoding, ready to be read once
// (b.reader): their keys, values and headers are read from b's few
// slices, reused from one fill to the next, not from an allocation per
// field (kafka-go's NewBytes, a []byte of each key and header value).
func (b *recordBufs) fill(msgs []*transport.Message, idx []int, now time.Time) {
	n := len(msgs)
	if idx != nil {
		n = len(idx)
	}
	at := func(j int) *transport.Message {
		if idx != nil {
			return msgs[idx[j]]
		}
		return msgs[j]
	}
	var nh, nb int
	for j := range n {
		m := at(j)
		for _, v := range m.Header {
			nb += len(v)
		}
		nh += len(m.Header)
		if addID(m) {
			nh++
			nb += len(m.ID)
		}
	}
	records := slices.Grow(b.records[:0], n)[:n]
	fields := slices.Grow(b.fields[:0], 2*n)[:2*n]
	// hdrs and vals are not grown while filled: the records hold
	// subslices of them.
	hdrs := slices.Grow(b.hdrs[:0], nh)
	vals := slices.Grow(b.vals[:0], nb)
	value := func(v string) []byte { // v's bytes in vals, capped
		start := len(vals)
		vals = append(vals, v...)
		return vals[start:len(vals):len(vals)]
	}
	for j := range records {
		m := at(j)
		r := &records[j]
		*r = kafkago.Record{Time: now}
		if m.Body != nil {
			f := &fields[2*j]
			*f = field{b: m.Body}
			r.Value = f
		}
		if m.Key != "" {
			f := &fields[2*j+1]
			*f = field{s: m.Key, str: true}
			r.Key = f
		}
		id := addID(m)
		if len(m.Header) == 0 && !id {
			continue
		}
		start := len(hdrs)
		for k, v := range m.Header {
			hdrs = append(hdrs, kafkago.Header{Key: k, Value: value(v)})
		}
		if id {
			hdrs = append(hdrs, kafkago.Header{Key: idHeader, Value: value(m.ID)})
		}
		r.Headers = hdrs[start:len(hdrs):len(hdrs)]
	}
	b.records, b.fields, b.hdrs, b.vals = records, fields, hdrs, vals
	b.reader = recordsReader{records: records}
}

// addID reports whether m's ID travels in the idHeader.
func addID(m *transport.Message) bool {
	return m.ID != "" && m.Header[transport.HeaderID] != m.ID
}

// field is a record's key (a string) or value (a []byte) as kafka-go's
// encoder reads it (protocol.Bytes), once.
type field struct {
	s   string
	b   []byte
	str bool
	off int
}

func (f *field) Len() int {
	if f.str {
		return len(f.s) - f.off
	}
	return len(f.b) - f.off
}

func (f *field) Read(p []byte) (int, error) {
	if f.Len() == 0 {
		return 0, io.EOF
	}
	var n int
	if f.str {
		n = copy(p, f.s[f.off:])
	} else {
		n = copy(p, f.b[f.off:])
	}
	f.off += n
	return n, nil
}

// WriteTo spares io.Copy (kafka-go's encoder uses it) a buffer.
func (f *field) WriteTo(w io.Writer) (int64, error) {
	var n int
	var err error
	if f.str {
		n, err = io.WriteString(w, f.s[f.off:])
	} else {
		n, err = w.Write(f.b[f.off:])
	}
	f.off += n
	return int64(n), err
}

func (f *field) Close() error { return nil }

// idHeader carries Message.ID when Header["ce_id"] does not already hold
// it (busway's typed API always sets ce_id = ID, so it rarely travels). It
// is removed from Header on delivery.
const idHeader = "busway-id"

// batchHeader is the size of a record batch's header (format v2), which
// the broker counts against max.message.bytes.
const batchHeader = 61

// recordBound is at least the size of m's record in an uncompressed batch
// (format v2): its fields plus the largest varints around them (length 5,
// attributes 1, timestamp delta 1 as a batch's records share a timestamp,
// offset delta 5, key and value lengths 5 each, header count 5; 10 per
// header).
func recordBound(m *transport.Message) int {
	n := 32 + len(m.Key) + len(m.Body)
	for k, v := range m.Header {
		n += 10 + len(k) + len(v)
	}
	if m.ID != "" {
		n += 10 + len(idHeader) + len(m.ID)
	}
	return n
}

// batchSize is the size of the record batch of msgs as Publish sends it:
// encoded (and compressed) by kafka-go's encoder, header included, the
// number the broker compares with max.message.bytes.
func (t *Transport) batchSize(msgs []*transport.Message, now time.Time) int {
	records := toRecords(msgs, nil, now)
	rs := protocol.RecordSet{
		Version:    2,
		Attributes: protocol.Attributes(t.cfg.compression) & 0x7,
		Records:    kafkago.NewRecordReader(records...),
	}
	var w countingWriter
	n, err := rs.WriteTo(&w)
	if err != nil {
		// Not encodable here, not encodable when sent: let the send report
		// it; the bound stands in for the size.
		size := batchHeader
		for _, m := range msgs {
			size += recordBound(m)
		}
		return size
	}
	return int(n) - 4 // the 4-byte length in front of the batch
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

func (t *Transport) compressionName() string {
	if t.cfg.compression == 0 {
		return "none"
	}
	return t.cfg.compression.String()
}

func sortFailures(f []transport.MessageError) {
	slices.SortFunc(f, func(a, b transport.MessageError) int { return cmp.Compare(a.Index, b.Index) })
}
