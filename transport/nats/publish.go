package nats

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
)

// Publish sends msgs to topic's subject and returns once JetStream has
// stored every one (or found it a duplicate of a message ID seen within
// the Duplicates window). One message is published synchronously; several
// are published asynchronously and awaited together. A batch that fails in
// part returns a *transport.PublishError naming each failed message; the
// others were stored. A message larger than the server's max payload fails
// the call with transport.ErrMessageTooLarge before anything is sent.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if t.closed.Load() {
		return t.errClosed("Publish")
	}
	if err := transport.ValidatePublish(topic, msgs); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	subject := t.s.subjectBase + topic
	max := t.nc.MaxPayload()
	nms := make([]natsgo.Msg, len(msgs))
	for i, m := range msgs {
		if err := t.toWire(&nms[i], subject, m); err != nil {
			return fmt.Errorf("%w: message #%d (id %q): %v", transport.ErrInvalidMessage, i, m.ID, err)
		}
		if size := wireSize(&nms[i]); max > 0 && int64(size) > max {
			return fmt.Errorf("%w: message #%d (id %q) to %q is %d bytes with headers, the server's max payload is %d; nothing was sent",
				transport.ErrMessageTooLarge, i, m.ID, topic, size, max)
		}
	}
	if err := ctx.Err(); err != nil {
		return err // nothing sent
	}
	parent := ctx
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	// ctxErr is why ctx ended: the caller's context error as it is, or
	// PublishTimeout when the caller gave no deadline.
	ctxErr := func() error {
		if err := parent.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%w: no ack from the server within PublishTimeout %v", transport.ErrUnavailable, t.s.PublishTimeout)
	}
	if len(msgs) == 1 {
		_, err := t.js.PublishMsg(ctx, &nms[0])
		if err != nil {
			if ctx.Err() != nil {
				err = ctxErr()
				if err == parent.Err() {
					return err // the caller's context error, as it is
				}
			}
			return t.publishError(topic, msgs[0], err)
		}
		return nil
	}
	return t.publishBatch(ctx, ctxErr, topic, msgs, nms)
}

func (t *Transport) publishBatch(ctx context.Context, ctxErr func() error, topic string, msgs []*transport.Message, nms []natsgo.Msg) error {
	futs := make([]jetstream.PubAckFuture, len(nms))
	var fails []transport.MessageError
	fail := func(i int, err error) {
		fails = append(fails, transport.MessageError{Index: i, ID: msgs[i].ID, Err: err})
	}
	next := 0 // the oldest future not yet awaited
	wait := func(i int) bool {
		select {
		case <-futs[i].Ok():
		case err := <-futs[i].Err():
			fail(i, t.wrapPubErr(topic, err))
		case <-ctx.Done():
			return false
		}
		return true
	}
	sent := 0
send:
	for i := range nms {
		for {
			f, err := t.js.PublishMsgAsync(&nms[i])
			if err == nil {
				futs[i] = f
				sent = i + 1
				break
			}
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() == nil {
				// The client's cap on unacknowledged async publishes is
				// reached: wait for our oldest (when others hold the slots,
				// the client already waited a moment) and try again.
				for next < i && futs[next] == nil {
					next++ // failed to send: nothing to wait for
				}
				if next < i {
					if !wait(next) {
						break send
					}
					futs[next] = nil
					next++
				}
				continue
			}
			fail(i, t.wrapPubErr(topic, err))
			sent = i + 1
			break
		}
		if ctx.Err() != nil {
			break
		}
	}
	for i := next; i < len(nms); i++ {
		if futs[i] == nil {
			if i >= sent {
				fail(i, ctxErr())
			}
			continue
		}
		if ctx.Err() == nil && wait(i) {
			continue
		}
		// ctx ended: report what has not been acked.
		select {
		case <-futs[i].Ok():
		case err := <-futs[i].Err():
			fail(i, t.wrapPubErr(topic, err))
		default:
			fail(i, ctxErr())
		}
	}
	if len(fails) == 0 {
		return nil
	}
	slices.SortFunc(fails, func(a, b transport.MessageError) int { return a.Index - b.Index })
	return &transport.PublishError{Topic: topic, Total: len(msgs), Failures: fails}
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
		return fmt.Errorf("%w: %v", transport.ErrMessageTooLarge, err)
	case errors.Is(err, natsgo.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse):
		if t.closed.Load() {
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
// subject as Nats-Msg-Id ("<subject>/<ID>", see msgID).
func (t *Transport) toWire(nm *natsgo.Msg, subject string, m *transport.Message) error {
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
		return nil
	}
	h := make(natsgo.Header, n)
	for k, v := range m.Header {
		if err := checkHeader(k, v); err != nil {
			return err
		}
		if strings.HasPrefix(k, transport.HeaderPrefix) {
			k = wirePrefix + k[len(transport.HeaderPrefix):]
		}
		h[k] = []string{v}
	}
	if m.Key != "" {
		if err := checkHeader("Key", m.Key); err != nil {
			return err
		}
		h[wireKeyHeader] = []string{m.Key}
	}
	if m.ID != "" {
		if err := checkHeader("ID", m.ID); err != nil {
			return err
		}
		h[headerMsgID] = []string{msgID(subject, m.ID)}
	}
	nm.Header = h
	return nil
}

// checkHeader rejects what the NATS header encoding cannot carry.
func checkHeader(k, v string) error {
	if k == "" {
		return errors.New("empty header name")
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Errorf("header name %q: character %q is not allowed (printable ASCII without ':' or space)", k, rune(c))
		}
	}
	if strings.ContainsAny(v, "\r\n") {
		return fmt.Errorf("header %q: value contains a line break", k)
	}
	return nil
}

// wireSize is the size the server counts against its max payload: the
// encoded headers plus the body.
func wireSize(nm *natsgo.Msg) int {
	n := len(nm.Data)
	if len(nm.Header) == 0 {
		return n
	}
	n += len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range nm.Header {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}

// msgID is the Nats-Msg-Id of a message with id published to subject.
//
// JetStream's duplicate window belongs to the stream, and one stream holds
// every topic: were Nats-Msg-Id the bare ID, the same ID published to a
// second topic (a dead letter, a replay, one event sent to two topics)
// would be acked as a duplicate and never stored. Scoped to the subject,
// only a true re-send (same ID, same topic) is dropped. The subject holds
// no '/' (topics and SubjectPrefix allow none), so the ID is what follows
// the first '/' after it.
func msgID(subject, id string) string { return subject + "/" + id }

// idOf undoes msgID for a message delivered on subject: a Nats-Msg-Id
// that another producer set without the subject is returned as it is.
func idOf(subject, v string) string {
	if len(v) > len(subject) && v[len(subject)] == '/' && v[:len(subject)] == subject {
		return v[len(subject)+1:]
	}
	return v
}
