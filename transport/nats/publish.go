package nats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// Publish sends msgs to topic's subject and returns once JetStream has
// stored every one (or found it a re-send of a message ID seen on this
// topic within the Duplicates window). One message is published
// synchronously; several are published asynchronously and awaited
// together. A batch that fails in part returns a *transport.PublishError
// naming each failed message; the others were stored.
//
// A message that can never be stored is rejected before anything is sent
// and only it fails (the others of the call are published): one larger
// than MaxMessageBytes with its headers (transport.ErrMessageTooLarge), or
// one NATS would not deliver as it was sent (transport.ErrInvalidMessage):
// a header transport.HeaderError refuses (a name nats.go refuses, a Nats-*
// name the server would obey, a ce-* name it would deliver as ce_*, a
// value nats.go would trim), an ID or Key HeaderValueError refuses, or a
// ce_partitionkey header other than the Key, which NATS carries in it.
// Both are marked transport.Permanent in the PublishError, so a caller
// (the Retry and DeadLetter middleware, an outbox relay) does not retry
// them.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if t.closer.Closed() {
		return t.errClosed("Publish")
	}
	if err := transport.ValidatePublish(topic, msgs); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	subject := t.s.subjectBase + topic
	limit := t.MaxMessageBytes()
	if len(msgs) == 1 {
		return t.publishOne(ctx, topic, subject, limit, msgs[:1])
	}
	bb := batchPool.Get().(*batchBuf)
	bms := bb.take(len(msgs))
	bb.wb.grow(subject, msgs)
	var rejected []transport.MessageError
	for i, m := range msgs {
		if err := checkWire(&bms[i].Msg, subject, m, limit, &bb.wb); err != nil {
			rejected = append(rejected, transport.MessageError{Index: i, ID: m.ID, Err: err})
		}
	}
	if len(rejected) > 0 {
		bb.release(bms) // nothing sent
		return t.publishRest(ctx, topic, msgs, rejected)
	}
	if err := ctx.Err(); err != nil {
		bb.release(bms)
		return err // nothing sent
	}
	parent := ctx
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	err, settled := t.publishBatch(ctx, parent, topic, msgs, bb, bms)
	if settled {
		bb.release(bms)
	}
	return err
}

// batchBuf is the storage of one batch's messages, reused through
// batchPool: the nats.Msgs with their header maps, the header values and
// the reply subjects. It is reused only once the batch is no longer
// awaited (then no message of it is sent again).
type batchBuf struct {
	bms     []batchMsg
	wb      wireBuf
	replies []byte
}

// reply writes into bb.replies the reply subject of message i of batch
// id, prefix + id + "." + i, and returns it (sharing bb.replies' memory,
// as wireBuf.msgID does).
func (bb *batchBuf) reply(prefix string, id uint64, i int) string {
	start := len(bb.replies)
	bb.replies = append(bb.replies, prefix...)
	bb.replies = strconv.AppendUint(bb.replies, id, 10)
	bb.replies = append(bb.replies, '.')
	bb.replies = strconv.AppendUint(bb.replies, uint64(i), 10)
	return unsafe.String(&bb.replies[start], len(bb.replies)-start)
}

var batchPool = sync.Pool{New: func() any { return new(batchBuf) }}

// take returns n messages to fill, each with the header map it had.
func (bb *batchBuf) take(n int) []batchMsg {
	if cap(bb.bms) < n {
		bb.bms = make([]batchMsg, n)
	}
	return bb.bms[:n]
}

// release returns bb, whose messages bms are done with, to batchPool,
// keeping their header maps but nothing of the caller's (bodies, header
// values). A batch of unusual size or headers is not kept.
func (bb *batchBuf) release(bms []batchMsg) {
	for i := range bms {
		bm := &bms[i]
		h := bm.Msg.Header
		if len(h) > 16 {
			h = nil
		}
		clear(h)
		bm.Msg = natsgo.Msg{Header: h}
		bm.err, bm.retries = nil, 0
		bm.state.Store(msgUnsent)
	}
	if cap(bb.bms) > 1024 || cap(bb.wb.ids) > 64<<10 || cap(bb.wb.vals) > 4096 || cap(bb.replies) > 64<<10 {
		return
	}
	bb.replies = bb.replies[:0]
	clear(bb.wb.vals[:cap(bb.wb.vals)]) // drop the caller's strings
	bb.wb.vals, bb.wb.ids = bb.wb.vals[:0], bb.wb.ids[:0]
	batchPool.Put(bb)
}

// publishOne publishes a single message synchronously. Its nats.Msg and
// header come from wirePool: nats.go encodes a request's headers before
// the call returns and keeps nothing of it.
func (t *Transport) publishOne(ctx context.Context, topic, subject string, limit int, one []*transport.Message) error {
	m := one[0]
	w := wirePool.Get().(*wireMsg)
	defer w.release()
	w.buf.grow(subject, one)
	if err := checkWire(&w.msg, subject, m, limit, &w.buf); err != nil {
		return &transport.PublishError{Topic: topic, Total: 1, Failures: []transport.MessageError{{Index: 0, ID: m.ID, Err: err}}}
	}
	if err := ctx.Err(); err != nil {
		return err // nothing sent
	}
	parent := ctx
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	if err := t.request(ctx, &w.msg); err != nil {
		if ctx.Err() != nil {
			err = t.ctxErr(parent)
			if err == parent.Err() {
				return err // the caller's context error, as it is
			}
		}
		return t.publishError(topic, m, err)
	}
	return nil
}

// request does what jetstream's PublishMsg does (a request to the
// stream, retried on no responders as jetstream retries it, the reply
// checked to be a PubAck), with the same errors, but reads an ack without
// decoding it into a PubAck busway does not use: the reply of a stored
// message is {"stream":"<name>","seq":<n>...}; any other reply is decoded
// as jetstream decodes it.
func (t *Transport) request(ctx context.Context, nm *natsgo.Msg) error {
	resp, err := t.nc.RequestMsgWithContext(ctx, nm)
	for r := 0; errors.Is(err, natsgo.ErrNoResponders) && r < jetstream.DefaultPubRetryAttempts; r++ {
		// A stream leader may be moving: jetstream retries too.
		if serr := backoff.Sleep(ctx, jetstream.DefaultPubRetryWait); serr != nil {
			return serr
		}
		resp, err = t.nc.RequestMsgWithContext(ctx, nm)
	}
	if err != nil {
		if errors.Is(err, natsgo.ErrNoResponders) {
			return jetstream.ErrNoStreamResponse
		}
		return err
	}
	return ackError(resp.Data)
}

// ackError is the error of a JetStream publish reply, as jetstream's
// PublishMsg returns it, or nil for a PubAck.
func ackError(data []byte) error {
	const okPrefix = `{"stream":"`
	if len(data) > len(okPrefix)+1 && string(data[:len(okPrefix)]) == okPrefix &&
		data[len(okPrefix)] != '"' && !bytes.Contains(data, []byte(`"error"`)) {
		return nil
	}
	var ack struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
	}
	if err := json.Unmarshal(data, &ack); err != nil {
		return jetstream.ErrInvalidJSAck
	}
	if ack.Error != nil {
		return ack.Error // its text starts "nats: API error"
	}
	if ack.Stream == "" {
		return jetstream.ErrInvalidJSAck
	}
	return nil
}

// ctxErr is why the publish context (parent with PublishTimeout) ended:
// the caller's context error as it is, or PublishTimeout when the caller
// gave no deadline.
func (t *Transport) ctxErr(parent context.Context) error {
	if err := parent.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: no ack from the server within PublishTimeout %v", transport.ErrUnavailable, t.s.PublishTimeout)
}

// checkWire fills nm from m (see toWire) and returns why m can never be
// stored, marked transport.Permanent, or nil.
func checkWire(nm *natsgo.Msg, subject string, m *transport.Message, limit int, wb *wireBuf) error {
	var err error
	if err = toWire(nm, subject, m, wb); err != nil {
		err = fmt.Errorf("%w: %v", transport.ErrInvalidMessage, err)
	} else if size, hdr := wireSize(nm); limit > 0 && size > limit {
		err = fmt.Errorf("%w: %d bytes with headers (%d of them headers), the limit is %d (MaxMessageBytes)",
			transport.ErrMessageTooLarge, size, hdr, limit)
	} else if hdr > maxHeaderBytes {
		err = fmt.Errorf("%w: its headers are %d bytes, JetStream stores at most %d",
			transport.ErrMessageTooLarge, hdr, maxHeaderBytes)
	}
	if err != nil {
		return transport.Permanent(err)
	}
	return nil
}

// publishRest publishes the messages of msgs that were not rejected and
// reports the rejected ones together with whatever else failed.
func (t *Transport) publishRest(ctx context.Context, topic string, msgs []*transport.Message, rejected []transport.MessageError) error {
	bad := make(map[int]bool, len(rejected))
	for _, r := range rejected {
		bad[r.Index] = true
	}
	var idx []int // positions in msgs of the messages to send
	for i := range msgs {
		if !bad[i] {
			idx = append(idx, i)
		}
	}
	fails := rejected
	if len(idx) > 0 {
		rest := make([]*transport.Message, len(idx))
		for j, i := range idx {
			rest[j] = msgs[i]
		}
		err := t.Publish(ctx, topic, rest...)
		var pe *transport.PublishError
		switch {
		case err == nil:
		case errors.As(err, &pe):
			for _, f := range pe.Failures {
				f.Index = idx[f.Index]
				fails = append(fails, f)
			}
		default: // the context ended, or the transport closed: none stored
			for _, i := range idx {
				fails = append(fails, transport.MessageError{Index: i, ID: msgs[i].ID, Err: err})
			}
		}
	}
	slices.SortFunc(fails, func(a, b transport.MessageError) int { return a.Index - b.Index })
	return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: fails}
}

// batchMsg is one message of a batch as publishBatch sends it, and its
// outcome.
type batchMsg struct {
	natsgo.Msg
	state   atomic.Uint32 // msgUnsent, msgSent, msgAcked or msgFailed (then err is set); changed under pubInbox.mu once sent
	retries int           // no-responders replies it was sent again after; under pubInbox.mu
	err     error
}

const (
	msgUnsent = iota // not sent (yet)
	msgSent          // sent, no outcome yet
	msgAcked
	msgFailed
)

// pubBatch is a batch that publishBatch sends and awaits: its messages,
// and its count of messages sent and without an outcome, plus one while
// publishBatch still sends.
type pubBatch struct {
	id      uint64 // its messages' replies come to pubInbox.prefix + id + "." + index
	bms     []batchMsg
	pending atomic.Int32
	done    chan struct{} // closed when pending reaches 0
	settled chan struct{} // a message was acked or failed; more would say nothing new
}

// settle records the outcome of bms[i], sent; the last one closes the
// batch's done. Called with pubInbox.mu.
func (b *pubBatch) settle(i int, err error) {
	bm := &b.bms[i]
	if bm.state.Load() != msgSent {
		return // settled already (a reply after a disconnect failed it)
	}
	if err != nil {
		bm.err = err
		bm.state.Store(msgFailed)
	} else {
		bm.state.Store(msgAcked)
	}
	if b.pending.Add(-1) == 0 {
		close(b.done)
	}
	select {
	case b.settled <- struct{}{}:
	default:
	}
}

// pubInbox is the subscription that receives the replies (PubAcks) to
// the batches' messages, which publishBatch sends with nats.go's
// PublishMsg instead of jetstream's PublishMsgAsync: no future, map
// entry, reply string and copy of the message per message, and a reply
// that is a PubAck is recognised without decoding it (ackError).
type pubInbox struct {
	mu      sync.Mutex
	sub     *natsgo.Subscription // nil until the first batch
	prefix  string               // "_INBOX.<nuid>."
	seq     uint64               // the last batch's id
	batches map[uint64]*pubBatch // the batches awaited
}

// batchWindow is how many messages of one batch may be sent and not yet
// answered, as jetstream's default PublishAsyncMaxPending (4000) was.
const batchWindow = 4000

// register makes b awaited, subscribing the inbox at the first batch.
func (t *Transport) register(b *pubBatch) (prefix string, err error) {
	p := &t.pub
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sub == nil {
		prefix := t.nc.NewInbox() + "."
		sub, err := t.nc.Subscribe(prefix+"*.*", t.pubReply)
		if err != nil {
			return "", err
		}
		// Every reply is awaited: nats.go's limits would drop some of a
		// large batch's (publishBatch then waits for them until ctx ends).
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			_ = sub.Unsubscribe()
			return "", err
		}
		p.sub, p.prefix, p.batches = sub, prefix, make(map[uint64]*pubBatch)
	}
	p.seq++
	b.id = p.seq
	p.batches[b.id] = b
	return p.prefix, nil
}

// unregister stops awaiting b: later replies to it are dropped, and its
// messages are no longer sent again.
func (t *Transport) unregister(b *pubBatch) {
	t.pub.mu.Lock()
	delete(t.pub.batches, b.id)
	t.pub.mu.Unlock()
}

// pubReply takes in a reply to a batch's message, on the inbox's
// goroutine: a PubAck or an error, as jetstream's PublishMsgAsync reads
// it; a no-responders status (the stream's leader may be moving) has the
// message sent again after DefaultPubRetryWait, up to
// DefaultPubRetryAttempts times, as jetstream does.
func (t *Transport) pubReply(m *natsgo.Msg) {
	p := &t.pub
	p.mu.Lock()
	defer p.mu.Unlock()
	bs, is, _ := strings.Cut(strings.TrimPrefix(m.Subject, p.prefix), ".")
	id, i := parseNum(bs), int(parseNum(is))
	b := p.batches[id]
	if b == nil || i >= len(b.bms) || b.bms[i].state.Load() != msgSent {
		return // no longer awaited
	}
	if len(m.Data) == 0 && m.Header.Get(hdrStatus) == statusNoResponder {
		bm := &b.bms[i]
		if bm.retries < jetstream.DefaultPubRetryAttempts {
			bm.retries++
			time.AfterFunc(jetstream.DefaultPubRetryWait, func() { t.resend(id, i) })
			return
		}
		b.settle(i, jetstream.ErrNoStreamResponse)
		return
	}
	b.settle(i, ackError(m.Data))
}

// resend sends message i of batch id again, if it is still awaited.
func (t *Transport) resend(id uint64, i int) {
	p := &t.pub
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.batches[id]
	if b == nil || b.bms[i].state.Load() != msgSent {
		return
	}
	if err := t.nc.PublishMsg(&b.bms[i].Msg); err != nil {
		b.settle(i, err)
	}
}

// failSent fails every message sent and not answered, when the
// connection is lost: its reply may be lost with it (jetstream's
// PublishMsgAsync does the same). The caller may send it again; the
// stream's deduplication drops it if it was stored.
func (t *Transport) failSent(err error) {
	p := &t.pub
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.batches {
		for i := range b.bms {
			b.settle(i, err)
		}
	}
}

// publishBatch sends bms asynchronously and waits for their outcomes,
// which pubReply records: no future, channel or select per message.
// settled says that nothing refers to bms any more (bb can be reused).
func (t *Transport) publishBatch(ctx, parent context.Context, topic string, msgs []*transport.Message, bb *batchBuf, bms []batchMsg) (err error, settled bool) {
	b := &pubBatch{bms: bms, done: make(chan struct{}), settled: make(chan struct{}, 1)}
	b.pending.Store(1) // publishBatch's own, until it sent them all
	prefix, rerr := t.register(b)
	var fails []transport.MessageError
	fail := func(i int, err error) {
		fails = append(fails, transport.MessageError{Index: i, ID: msgs[i].ID, Err: err})
	}
	if rerr != nil {
		for i := range msgs {
			fail(i, t.wrapPubErr(topic, rerr))
		}
		return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: fails}, true
	}
	// One allocation at most for the replies (a uint64 and an int in
	// decimal take at most 20 bytes each).
	bb.replies = slices.Grow(bb.replies[:0], len(bms)*(len(prefix)+24))
	for i := range bms {
		if ctx.Err() != nil {
			break
		}
		for int(b.pending.Load())-1 >= batchWindow && ctx.Err() == nil {
			select {
			case <-b.settled:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		bm := &bms[i]
		bm.Reply = bb.reply(prefix, b.id, i)
		b.pending.Add(1) // before its reply can come
		bm.state.Store(msgSent)
		if err := t.nc.PublishMsg(&bm.Msg); err != nil {
			t.pub.mu.Lock()
			b.settle(i, err)
			t.pub.mu.Unlock()
		}
	}
	if b.pending.Add(-1) == 0 {
		close(b.done)
	}
	if ctx.Err() == nil {
		select {
		case <-b.done:
		case <-ctx.Done():
		}
	}
	t.unregister(b)
	// Once ctx ended, what has no outcome yet (not sent, or not acked) is
	// reported as not stored.
	for i := range bms {
		bm := &bms[i]
		switch bm.state.Load() {
		case msgAcked:
		case msgFailed:
			fail(i, t.wrapPubErr(topic, bm.err))
		default:
			fail(i, t.ctxErr(parent))
		}
	}
	if len(fails) == 0 {
		return nil, true
	}
	return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: fails}, true
}

func (t *Transport) publishError(topic string, m *transport.Message, err error) error {
	return &transport.PublishError{Topic: topic, Total: 1, Failures: []transport.MessageError{{Index: 0, ID: m.ID, Err: t.wrapPubErr(topic, err)}}}
}

// wrapPubErr classifies the error of one message.
func (t *Transport) wrapPubErr(topic string, err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, natsgo.ErrMaxPayload), errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
		// The server's limit is below what New saw: it does not go away
		// by retrying.
		return transport.Permanent(fmt.Errorf("%w: %v", transport.ErrMessageTooLarge, err))
	case errors.Is(err, natsgo.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse):
		if t.closer.Closed() {
			return fmt.Errorf("%w: %v", transport.ErrClosed, err)
		}
		return fmt.Errorf("%w: no stream answered for subject %q (is stream %q up and holding %q?): %v",
			transport.ErrUnavailable, t.s.subjectBase+topic, t.s.Stream, t.s.subjectBase+">", err)
	case errors.Is(err, natsgo.ErrConnectionClosed):
		return fmt.Errorf("%w: %v", transport.ErrClosed, err)
	case errors.Is(err, natsgo.ErrTimeout), errors.Is(err, natsgo.ErrDisconnected),
		errors.Is(err, natsgo.ErrConnectionReconnecting), errors.Is(err, jetstream.ErrAsyncPublishTimeout):
		return fmt.Errorf("%w: %v", transport.ErrUnavailable, err)
	}
	return err
}

// toWire fills nm from m: the CloudEvents attributes with the NATS
// binding's "ce-" prefix, Key as ce-partitionkey, and ID scoped to the
// subject as Nats-Msg-Id ("<subject>/<ID>", see wireBuf.msgID). The header's
// values are carved from wb; a header nm already has (a pooled one) is
// cleared and reused. A header name, a header value, the ID or the Key that
// a NATS header cannot carry unchanged is an error naming it
// (transport.HeaderError, transport.HeaderValueError): nats.go would
// send the value changed, and the message would arrive altered.
func toWire(nm *natsgo.Msg, subject string, m *transport.Message, wb *wireBuf) error {
	nm.Subject = subject
	nm.Data = m.Body
	n := len(m.Header)
	if m.ID != "" {
		n++
	}
	if m.Key != "" {
		n++
	}
	if n == 0 {
		nm.Header = nil
		return nil
	}
	// ID and Key travel as header values: nats.go would change them as it
	// changes any value (line breaks, white space at the ends).
	if err := transport.HeaderValueError(m.ID); err != nil {
		return fmt.Errorf("the ID: %v", err)
	}
	if err := transport.HeaderValueError(m.Key); err != nil {
		return fmt.Errorf("the key: %v", err)
	}
	h := nm.Header
	if h == nil {
		h = make(natsgo.Header, n)
	} else {
		clear(h)
	}
	for k, v := range m.Header {
		if err := transport.HeaderError(k, v); err != nil {
			return err
		}
		if k == transport.HeaderPartitionKey && v != m.Key {
			return fmt.Errorf("header %s %q is not the Key %q: NATS carries the Key in that header", k, v, m.Key)
		}
		if strings.HasPrefix(k, transport.HeaderPrefix) {
			k = wireName(k)
		}
		h[k] = wb.value(v)
	}
	if m.Key != "" {
		h[wireKeyHeader] = wb.value(m.Key)
	}
	if m.ID != "" {
		h[headerMsgID] = wb.value(wb.msgID(subject, m.ID))
	}
	nm.Header = h
	return nil
}

// wireNames holds the NATS names of the CloudEvents attributes busway's
// typed API sets, so that sending them allocates no new name each time.
var wireNames = func() map[string]string {
	m := make(map[string]string)
	for _, a := range []string{"id", "source", "type", "specversion", "time", "subject",
		"datacontenttype", "dataschema", "partitionkey", "traceparent", "tracestate"} {
		m[transport.HeaderPrefix+a] = wirePrefix + a
	}
	return m
}()

// wireName is the NATS name of a header name with transport.HeaderPrefix.
func wireName(k string) string {
	if w, ok := wireNames[k]; ok {
		return w
	}
	return wirePrefix + k[len(transport.HeaderPrefix):]
}

// wireBuf is the storage of the header values of one Publish call: one
// slice of values and one buffer of Nats-Msg-Id values instead of an
// allocation per header and per ID.
type wireBuf struct {
	vals []string
	ids  []byte
}

// grow reserves room for the headers of msgs published to subject, so
// that carving them out allocates once.
func (wb *wireBuf) grow(subject string, msgs []*transport.Message) {
	var nv, nb int
	for _, m := range msgs {
		nv += len(m.Header)
		if m.Key != "" {
			nv++
		}
		if m.ID != "" {
			nv++
			nb += len(subject) + 1 + len(m.ID)
		}
	}
	wb.vals = slices.Grow(wb.vals[:0], nv)
	wb.ids = slices.Grow(wb.ids[:0], nb)
}

// value is a one-element slice holding v, carved from wb.vals (capped, so
// that nothing appends into its neighbour).
func (wb *wireBuf) value(v string) []string {
	wb.vals = append(wb.vals, v)
	n := len(wb.vals)
	return wb.vals[n-1 : n : n]
}

// msgID writes into wb.ids the Nats-Msg-Id of a message with id
// published to subject, "<subject>/<id>", and returns it.
//
// JetStream's duplicate window belongs to the stream, and one stream holds
// every topic: were Nats-Msg-Id the bare ID, the same ID published to a
// second topic (a dead letter, a replay, one event sent to two topics)
// would be acked as a duplicate and never stored. Scoped to the subject,
// only a true re-send (same ID, same topic) is dropped. The subject holds
// no '/' (topics and SubjectPrefix allow none), so the ID is what follows
// the first '/' after it.
//
// The string shares wb.ids' memory: wb.ids is only appended to while
// strings of it are in use (a pooled wireBuf is reset only once nats.go is
// done with its message), and an append that moves it leaves the old
// bytes as they were.
func (wb *wireBuf) msgID(subject, id string) string {
	start := len(wb.ids)
	wb.ids = append(wb.ids, subject...)
	wb.ids = append(wb.ids, '/')
	wb.ids = append(wb.ids, id...)
	return unsafe.String(&wb.ids[start], len(wb.ids)-start)
}

// wireMsg is the nats.Msg of a single (synchronous) publish with its
// header storage, reused through wirePool.
type wireMsg struct {
	msg natsgo.Msg
	buf wireBuf
}

var wirePool = sync.Pool{New: func() any { return new(wireMsg) }}

// release returns w to wirePool once nats.go is done with w.msg. A
// message with unusually many or large headers is not kept.
func (w *wireMsg) release() {
	if len(w.msg.Header) > 16 || cap(w.buf.ids) > 4096 || cap(w.buf.vals) > 16 {
		return
	}
	h := w.msg.Header
	clear(h)
	w.msg = natsgo.Msg{Header: h}
	w.buf.vals = w.buf.vals[:0]
	clear(w.buf.vals[:cap(w.buf.vals)]) // drop the caller's strings
	w.buf.ids = w.buf.ids[:0]
	wirePool.Put(w)
}

// maxHeaderBytes is the largest header block JetStream stores (the server
// refuses more than 64 KiB - 1 of headers).
const maxHeaderBytes = 1<<16 - 1

// MaxMessageBytes is the largest message Publish accepts, headers
// included, in bytes: the server's max payload, or the stream's
// MaxMsgSize when it was smaller when New ran. A message's size is its
// Body plus, when it has any header (ID and Key travel as headers), 12
// bytes and for each header len(name) + len(value) + 4, where the ID's
// header is Nats-Msg-Id with the value "<subject>/<ID>", the Key's
// ce-partitionkey, and a "ce_" name is sent as "ce-". A larger message
// fails with transport.ErrMessageTooLarge, and the error states both
// sizes, so a caller that builds a message to fit (a dead letter) can
// shrink it and try again. 0 means no limit is known.
func (t *Transport) MaxMessageBytes() int {
	limit := int(t.nc.MaxPayload())
	if m := int(t.maxMsgSize.Load()); m > 0 && (limit <= 0 || m < limit) {
		limit = m
	}
	return limit
}

// wireSize is the size the server counts against its max payload, the
// encoded headers plus the body, as nats.go encodes them; hdr is the
// headers' part.
func wireSize(nm *natsgo.Msg) (size, hdr int) {
	if len(nm.Header) > 0 {
		hdr = len("NATS/1.0\r\n") + len("\r\n")
		for k, vs := range nm.Header {
			for _, v := range vs {
				hdr += len(k) + len(": ") + len(textproto.TrimString(v)) + len("\r\n")
			}
		}
	}
	return hdr + len(nm.Data), hdr
}

// idOf undoes wireBuf.msgID for a message delivered on subject: a Nats-Msg-Id
// that another producer set without the subject is returned as it is.
func idOf(subject, v string) string {
	if len(v) > len(subject) && v[len(subject)] == '/' && v[:len(subject)] == subject {
		return v[len(subject)+1:]
	}
	return v
}
