package transporttest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/busway/busway/transport"
)

// messageLimiter is implemented by transports whose broker limits the size
// of a message (nats, kafka): MaxMessageBytes is that limit, 0 when none is
// known.
type messageLimiter interface{ MaxMessageBytes() int }

// testOversizeInBatch: a batch holding one message over the broker's limit
// fails with a *transport.PublishError that lists exactly that message
// (ErrMessageTooLarge), and the batch's other messages, which the error says
// were accepted, are delivered. A transport that sent nothing while listing
// only the large message would lose the rest for a caller that trusts the
// error (an outbox relay deletes the rows it did not list).
func (s *suite) testOversizeInBatch(t *testing.T) {
	tr := s.open(t)
	ml, ok := tr.(messageLimiter)
	if !ok || ml.MaxMessageBytes() <= 0 {
		t.Skip("the transport states no message size limit")
	}
	limit := ml.MaxMessageBytes()
	topic := UniqueTopic(t)
	rec := newRecorder()
	s.subscribe(t, tr, topic, rec.handle, transport.SubscribeOptions{Group: UniqueGroup(t), StartFrom: transport.StartEarliest})
	msgs := []*transport.Message{
		event(topic+"-small-0", "a", "before"),
		event(topic+"-large", "b", ""),
		event(topic+"-small-2", "c", "after"),
	}
	// Random bytes: a compressing transport cannot shrink them under the limit.
	msgs[1].Body = make([]byte, limit+1)
	rand.NewChaCha8([32]byte{1}).Read(msgs[1].Body)
	err := tr.Publish(t.Context(), topic, msgs...)
	var pe *transport.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish of a batch with one message over %d bytes: got %v, want a *transport.PublishError", limit, err)
	}
	if len(pe.Failures) != 1 || pe.Failures[0].Index != 1 || !errors.Is(pe.Failures[0].Err, transport.ErrMessageTooLarge) {
		t.Fatalf("PublishError lists %s, want exactly message #1 failing with ErrMessageTooLarge", describeFailures(pe.Failures))
	}
	s.waitFor(t, "the batch's accepted messages", rec.hasAll([]string{msgs[0].ID, msgs[2].ID}))
}

func describeFailures(fs []transport.MessageError) string {
	var b strings.Builder
	for i, f := range fs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "#%d (%v)", f.Index, f.Err)
	}
	if b.Len() == 0 {
		return "nothing"
	}
	return b.String()
}
