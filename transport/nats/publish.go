package nats

import (
	"context"
	"errors"
	"fmt"
	"net/textproto"
	"slices"
	"strings"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
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
// one with a header name nats.go refuses (transport.ErrInvalidMessage).
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
	nms := make([]natsgo.Msg, len(msgs))
	var rejected []transport.MessageError
	for i, m := range msgs {
		var err error
		if err = t.toWire(&nms[i], subject, m); err != nil {
			err = fmt.Errorf("%w: %v", transport.ErrInvalidMessage, err)
		} else if size, hdr := wireSize(&nms[i]); limit > 0 && size > limit {
			err = fmt.Errorf("%w: %d bytes with headers (%d of them headers), the limit is %d (MaxMessageBytes)",
				transport.ErrMessageTooLarge, size, hdr, limit)
		} else if hdr > maxHeaderBytes {
			err = fmt.Errorf("%w: its headers are %d bytes, JetStream stores at most %d",
				transport.ErrMessageTooLarge, hdr, maxHeaderBytes)
		}
		if err != nil {
			rejected = append(rejected, transport.MessageError{Index: i, ID: m.ID, Err: transport.Permanent(err)})
		}
	}
	if len(rejected) > 0 {
		return t.publishRest(ctx, topic, msgs, nms, rejected)
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

// publishRest publishes the messages of msgs that were not rejected and
// reports the rejected ones together with whatever else failed.
func (t *Transport) publishRest(ctx context.Context, topic string, msgs []*transport.Message, nms []natsgo.Msg, rejected []transport.MessageError) error {
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
		if err := transport.HeaderNameError(k); err != nil {
			return err
		}
		if strings.HasPrefix(k, transport.HeaderPrefix) {
			k = wirePrefix + k[len(transport.HeaderPrefix):]
		}
		h[k] = []string{v}
	}
	if m.Key != "" {
		h[wireKeyHeader] = []string{m.Key}
	}
	if m.ID != "" {
		h[headerMsgID] = []string{msgID(subject, m.ID)}
	}
	nm.Header = h
	return nil
}

// Header names: nats.go refuses to encode (ErrBadHeaderMsg) exactly the
// names transport.ValidHeaderName refuses, so Publish refuses them up front
// with transport.HeaderNameError. Every value is accepted, as nats.go
// accepts it: it sends the value with surrounding whitespace trimmed and
// each CR or LF as a space.

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
