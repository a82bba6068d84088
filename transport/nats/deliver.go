package nats

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/internal/dispatch"
)

// delivery runs a subscription's handlers: the held messages wait in a
// key-ordered dispatcher, from which Concurrency workers take them. The
// messages of one key run one at a time, in stream order; a slow key
// holds up only its own later messages.
type delivery struct {
	s *subscription
	d *dispatch.Dispatcher[*held]
	// keyed: messages go by their key. With one worker they do not need
	// to: everything runs in stream order, in one lane (oneLane), which
	// the worker keeps while it has messages and takes in batches; as
	// keyless messages each would be a lane of its own, through the
	// dispatcher's ready queue and a wake-up each.
	keyed bool
	slots []slot // per worker: the Message its handler gets
	// releaseBatch is how many settled messages a worker releases from the
	// held set at once (and before it waits for more): a take of the held
	// set's lock, shared with the inbox, and a look at the room for every
	// few messages instead of each, while what is settled and not yet
	// released stays a small share of MaxHeld, so pull asks for room at
	// most that much later.
	releaseBatch int
	workers      sync.WaitGroup // the workers (a replacement counts as the one it replaces)
	// hctx is the handlers' context, cancelled when Close gives up waiting.
	hctx   context.Context
	cancel context.CancelFunc
}

type lane = dispatch.Lane[*held]

// newDelivery returns the delivery of s with the given number of workers,
// not started; ctx's values reach the handlers, its cancellation does not.
func newDelivery(s *subscription, ctx context.Context, workers int) *delivery {
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &delivery{
		s:            s,
		d:            dispatch.New[*held](dispatch.Config{}), // pull bounds what is added: MaxHeld
		keyed:        workers > 1,
		slots:        make([]slot, workers),
		releaseBatch: max(1, min(16, s.ss.maxHeld/16)),
		hctx:         hctx,
		cancel:       cancel,
	}
}

// start starts the workers.
func (dl *delivery) start() {
	dl.workers.Add(len(dl.slots))
	for i := range dl.slots {
		go dl.work(i, nil)
	}
}

// finish has the workers end once nothing is ready (queued messages are
// still run) and waits for them.
func (dl *delivery) finish() {
	dl.d.Close()
	dl.workers.Wait()
}

// oneLane is the key of every message of a delivery with one worker.
const oneLane = "\x00"

// queue adds a held message to the dispatcher, behind the unfinished
// messages of its key.
func (dl *delivery) queue(h *held) {
	key := oneLane
	if dl.keyed {
		key = ""
		if v := h.m.Header[wireKeyHeader]; len(v) > 0 {
			key = v[0]
		}
	}
	dl.d.Add(key, h)
}

// work runs worker i: the lanes the dispatcher hands it, starting with l
// when it is not nil, one message at a time.
func (dl *delivery) work(i int, l *lane) {
	sl := &dl.slots[i]
	running := false // a handler runs on this goroutine
	defer func() {
		if running {
			// The handler called runtime.Goexit (t.FailNow in a test, say):
			// this goroutine is ending and nothing can stop that. handle
			// settled the message as failed (transport.CallHandler logged
			// it); a new goroutine takes this worker's place, and its lane
			// when the lane stays with it.
			sl.finished = append(sl.finished, l.Head())
			dl.s.held.release(sl.finished)
			sl.finished = sl.finished[:0]
			if !dl.d.Done(l) {
				l = nil
			}
			go dl.work(i, l)
			return
		}
		dl.workers.Done()
	}()
	for {
		if l == nil {
			// What this worker finished leaves the held set before it
			// waits (or ends).
			dl.s.held.release(sl.finished)
			sl.finished = sl.finished[:0]
			if l = dl.d.Next(nil, sl); l == nil {
				return
			}
		}
		running = true
		h := l.Head()
		dl.handle(sl, h)
		running = false
		if sl.finished = append(sl.finished, h); len(sl.finished) >= dl.releaseBatch {
			dl.s.held.release(sl.finished)
			sl.finished = sl.finished[:0]
		}
		if !dl.d.Done(l) {
			l = nil
		}
	}
}

// handle runs the handler on one message and acks, naks or terminates
// it; the caller releases it from the held set.
func (dl *delivery) handle(sl *slot, h *held) {
	s := dl.s
	jm := h.m
	if s.closing.Load() && dl.hctx.Err() != nil {
		s.nak(jm, 0)
		return
	}
	m := sl.fill(s, jm)
	attempt, id := m.Attempt, m.ID
	returned := false
	defer func() {
		if !returned { // runtime.Goexit in the handler: a failed delivery
			s.settle(jm, attempt, id, transport.ErrHandlerGoexit)
		}
	}()
	err := transport.CallHandler(dl.hctx, s.t.log, s.h, m)
	returned = true
	s.settle(jm, attempt, id, err)
}

// settle acks, naks or terminates a message whose handler returned err.
func (s *subscription) settle(jm *natsgo.Msg, attempt int, id string, err error) {
	switch {
	case err == nil:
		if aerr := s.ack(jm); aerr != nil {
			// Not acked: the server redelivers after AckWait (at-least-once).
			s.t.log.Warn("nats: ack", "topic", s.topic, "group", s.group, "id", id, "error", aerr)
		}
	case s.ss.maxDeliver > 0 && attempt >= s.ss.maxDeliver:
		// The server will not deliver it again: terminate it, so that it
		// stops holding the consumer's ack floor (it stays in the stream).
		s.t.log.Error("nats: message failed on its last delivery (MaxDeliver) and is terminated; it stays in the stream but is not delivered to this group again",
			"topic", s.topic, "group", s.group, "id", id, "attempt", attempt, "max_deliver", s.ss.maxDeliver, "error", err)
		// Plain Term: nats-server 2.9 ignores a Term with a reason.
		if terr := jm.Term(); terr != nil {
			s.t.log.Warn("nats: term", "topic", s.topic, "group", s.group, "id", id, "error", terr)
		}
	default:
		s.nak(jm, s.ss.nakDelay(attempt))
	}
}

// ackBody is the body of an ack, as nats.go's Msg.Ack sends it.
var ackBody = []byte("+ACK")

// ack acks m, sending what m.Ack sends, without its allocation (its
// options escape) and its look at the subscription: a stream message of
// the pull inbox has a reply (receive checked it), and settle acks it at
// most once. (m is not marked acked: an InProgress that progress sends
// after the ack is ignored by the server.)
func (s *subscription) ack(m *natsgo.Msg) error {
	return s.t.nc.Publish(m.Reply, ackBody)
}

func (s *subscription) nak(m *natsgo.Msg, d time.Duration) {
	var err error
	if d > 0 {
		err = m.NakWithDelay(d)
	} else {
		err = m.Nak()
	}
	if err != nil {
		s.t.log.Warn("nats: nak", "topic", s.topic, "group", s.group, "error", err)
	}
}

// slot holds the Message a worker's handler gets, reused from one message
// to the next with its maps (transport.Message allows that: a handler must
// not keep it), which spares the allocations per message.
type slot struct {
	m         transport.Message
	hdr, meta map[string]string
	// finished is what the worker settled and has not yet released from
	// the held set: it releases them together (see delivery.releaseBatch).
	finished []*held
}

// canonical maps the NATS binding's spelling of the CloudEvents attributes
// to the canonical one, so that the common ones cost no allocation.
var canonical = map[string]string{
	"ce-id": transport.HeaderID, "ce-source": transport.HeaderSource, "ce-specversion": transport.HeaderSpecVersion,
	"ce-type": transport.HeaderType, "ce-subject": transport.HeaderSubject, "ce-time": transport.HeaderTime,
	"ce-dataschema": transport.HeaderDataSchema, wireKeyHeader: transport.HeaderPartitionKey,
}

// fill makes the slot's Message the delivery of jm, mapping "ce-" headers
// back to the canonical "ce_" spelling.
func (sl *slot) fill(s *subscription, jm *natsgo.Msg) *transport.Message {
	if sl.hdr == nil {
		sl.hdr, sl.meta = make(map[string]string), make(map[string]string, 1)
	}
	if len(sl.hdr) > 0 {
		clear(sl.hdr)
	}
	m := &sl.m
	*m = transport.Message{Topic: s.topic, Group: s.group, Body: jm.Data}
	// The ID by its key, and the other headers, if any, by iterating:
	// most messages carry only the ID, and an iteration costs more than
	// a look-up (its random start among them).
	others := len(jm.Header)
	if vs, ok := jm.Header[headerMsgID]; ok {
		others--
		if len(vs) > 0 {
			m.ID = idOf(jm.Subject, vs[0])
		}
	}
	if others > 0 {
		for k, vs := range jm.Header {
			if len(vs) == 0 || k == headerMsgID {
				continue
			}
			v := vs[0]
			if strings.HasPrefix(k, wirePrefix) {
				if c, ok := canonical[k]; ok {
					k = c
				} else {
					k = transport.HeaderPrefix + k[len(wirePrefix):]
				}
			}
			sl.hdr[k] = v
		}
	}
	if len(sl.hdr) > 0 {
		m.Header = sl.hdr
		m.Key = sl.hdr[transport.HeaderPartitionKey]
		if m.ID == "" {
			// A foreign CloudEvents producer that set no Nats-Msg-Id.
			m.ID = sl.hdr[transport.HeaderID]
		}
	}
	if md, ok := s.ackMeta(jm.Reply); ok {
		m.Attempt = int(md.delivered)
		m.Time = time.Unix(0, md.time)
		// Meta holds the sequence alone, unless the last handler added to
		// it: overwritten, it needs no clearing then.
		sl.meta[transport.MetaSequence] = md.seq
		if len(sl.meta) != 1 {
			clear(sl.meta)
			sl.meta[transport.MetaSequence] = md.seq
		}
		m.Meta = sl.meta
	} else {
		if len(sl.meta) > 0 {
			clear(sl.meta)
		}
		m.Attempt = 1
		m.Time = time.Now()
	}
	return m
}

// ackMetadata is what fill reads of a message's ack subject.
type ackMetadata struct {
	delivered, streamSeq uint64
	time                 int64  // when the stream stored it, in Unix nanoseconds
	seq                  string // streamSeq in decimal: the subject's own token when it is that
}

// ackMeta reads the delivery count, stream sequence and time from a
// JetStream ack subject, as nats.go's Msg.Metadata does, without its
// allocations (the parsed tokens' strings, a *MsgMetadata per message):
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>
//	$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>[.<token>...]
//
// The first form has 9 tokens, the second at least 11.
func ackMeta(reply string) (md ackMetadata, ok bool) {
	rest, ok := strings.CutPrefix(reply, "$JS.ACK.")
	if !ok {
		return md, false
	}
	var skip int // rest's tokens before <delivered>
	switch n := strings.Count(rest, ".") + 3; {
	case n == 9:
		skip = 2
	case n >= 11:
		skip = 4
	default:
		return md, false
	}
	for range skip {
		rest = rest[strings.IndexByte(rest, '.')+1:]
	}
	return ackTail(rest)
}

// ackMeta is the package's ackMeta for the subscription's messages: the
// subjects of the first form begin with the subscription's own
// "$JS.ACK.<stream>.<consumer>.", which it need not read, and then have
// four dots.
func (s *subscription) ackMeta(reply string) (ackMetadata, bool) {
	if tail, ok := strings.CutPrefix(reply, s.ackPrefix); ok && strings.Count(tail, ".") == 4 {
		return ackTail(tail)
	}
	return ackMeta(reply)
}

// ackTail reads "<delivered>.<sseq>.<cseq>.<time>.<pending>...", the end
// of an ack subject with at least four dots, in one pass: a Cut per
// token and a count of the whole subject's dots took twice as long.
func ackTail(t string) (md ackMetadata, ok bool) {
	var dot [4]int // where the first four dots are
	n := 0
	for i := 0; i < len(t) && n < len(dot); i++ {
		if t[i] == '.' {
			dot[n] = i
			n++
		}
	}
	if n < len(dot) {
		return md, false
	}
	seq := t[dot[0]+1 : dot[1]]
	md.delivered, md.streamSeq, md.time = parseNum(t[:dot[0]]), parseNum(seq), int64(parseNum(t[dot[2]+1:dot[3]]))
	if md.streamSeq > 0 && seq[0] != '0' {
		md.seq = seq // no allocation: it shares the reply's bytes
	} else {
		md.seq = strconv.FormatUint(md.streamSeq, 10)
	}
	return md, true
}

// parseNum reads a decimal number of an ack subject, 0 for anything
// else, as nats.go reads it.
func parseNum(d string) (n uint64) {
	for i := 0; i < len(d); i++ {
		c := d[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
