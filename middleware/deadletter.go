package middleware

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/busway/busway/transport"
)

// Headers DeadLetter adds to a dead-lettered message.
const (
	// HeaderDLQError is the error text of the last failure, on one line,
	// at most MaxDLQErrorLen bytes.
	HeaderDLQError = "busway-dlq-error"
	// HeaderDLQAttempts is the number of handler calls made in the delivery
	// that gave up (Retry's count; 1 without Retry).
	HeaderDLQAttempts = "busway-dlq-attempts"
	// HeaderDLQDelivery is the transport's delivery count (Message.Attempt),
	// when the transport counts deliveries.
	HeaderDLQDelivery = "busway-dlq-delivery"
	// HeaderDLQGroup is the consumer group that failed (Message.Group).
	HeaderDLQGroup = "busway-dlq-group"
	// HeaderDLQTopic is the topic the message was consumed from.
	HeaderDLQTopic = "busway-dlq-topic"
	// HeaderDLQTime is when it was dead-lettered, RFC 3339 with nanoseconds,
	// UTC.
	HeaderDLQTime = "busway-dlq-time"
	// HeaderDLQPermanent is "true" when the error was marked permanent.
	HeaderDLQPermanent = "busway-dlq-permanent"
)

// MaxDLQErrorLen caps the error text in HeaderDLQError: brokers limit header
// sizes, and a panic value may be long.
const MaxDLQErrorLen = 1024

// DeadLetterOptions configure DeadLetter. The zero value means the defaults.
type DeadLetterOptions struct {
	// Topic names the dead-letter topic for a message consumed from topic.
	// Default DLQTopic: "<topic>.dlq". Every group shares it; the group is
	// in HeaderDLQGroup.
	Topic func(topic string) string
	// Now is the clock for HeaderDLQTime. Default time.Now.
	Now func() time.Time
}

// DLQTopic is the default dead-letter topic name: topic + ".dlq".
func DLQTopic(topic string) string { return topic + ".dlq" }

// DeadLetter publishes a message whose inner chain failed (retries
// exhausted, or a permanent error at once) through pub to its dead-letter
// topic, then acknowledges it by returning nil. The message is published
// unchanged (a clone: same ID, Key, Body and headers) plus the
// HeaderDLQ* headers, so it can be inspected and replayed.
//
// If that publish fails, DeadLetter returns the handler error joined with
// the publish error, so the original is not acknowledged and is delivered
// again: nothing is lost. When ctx has ended (the subscription is closing),
// it does not dead-letter but returns the error, so the message is
// redelivered after the restart instead of being parked. A nil pub makes
// every failure an error wrapping transport.ErrInvalidOptions, so nothing is
// acknowledged by mistake.
//
// Place it outside Retry, so it sees only what retrying could not fix, and
// outside Idempotent, so a dead-lettered message is not marked handled and
// can be replayed from the dead-letter topic.
func DeadLetter(pub transport.Publisher, opts DeadLetterOptions) Middleware {
	name := opts.Topic
	if name == nil {
		name = DLQTopic
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error {
			err := next(ctx, m)
			if err == nil || ctx.Err() != nil {
				return err
			}
			if pub == nil {
				return errors.Join(err, fmt.Errorf("%w: DeadLetter has a nil Publisher", transport.ErrInvalidOptions))
			}
			topic := name(m.Topic)
			d := m.Clone()
			d.Topic, d.Group, d.Time, d.Attempt, d.Meta = "", "", time.Time{}, 0, nil
			if d.Header == nil {
				d.Header = make(map[string]string, 7)
			}
			d.Header[HeaderDLQError] = oneLine(err.Error(), MaxDLQErrorLen)
			d.Header[HeaderDLQAttempts] = strconv.Itoa(Attempts(err))
			if m.Attempt > 0 {
				d.Header[HeaderDLQDelivery] = strconv.Itoa(m.Attempt)
			}
			d.Header[HeaderDLQGroup] = m.Group
			d.Header[HeaderDLQTopic] = m.Topic
			d.Header[HeaderDLQTime] = now().UTC().Format(time.RFC3339Nano)
			if transport.IsPermanent(err) {
				d.Header[HeaderDLQPermanent] = "true"
			}
			if perr := pub.Publish(ctx, topic, d); perr != nil {
				return errors.Join(err, &DeadLetterError{Topic: topic, Err: perr})
			}
			if r := reportFrom(ctx); r != nil {
				r.deadLettered, r.dlqTopic, r.err, r.attempts = true, topic, err, Attempts(err)
			}
			return nil
		}
	}
}

// DeadLetterError is a failed publish to the dead-letter topic. DeadLetter
// returns it joined with the handler's error.
type DeadLetterError struct {
	Topic string
	Err   error
}

func (e *DeadLetterError) Error() string {
	return fmt.Sprintf("busway: publish to dead-letter topic %q: %v", e.Topic, e.Err)
}

func (e *DeadLetterError) Unwrap() error { return e.Err }

// oneLine replaces line breaks so the text is a valid header value on every
// broker, and truncates it to max bytes on a rune boundary.
func oneLine(s string, max int) string {
	if strings.ContainsAny(s, "\r\n") {
		s = strings.NewReplacer("\r\n", " | ", "\n", " | ", "\r", " | ").Replace(s)
	}
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
