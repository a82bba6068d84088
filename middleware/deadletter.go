package middleware

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/busway/busway/transport"
)

// Headers DeadLetter adds to a dead-lettered message.
const (
	// HeaderDLQError is the error text of the last failure, on one line,
	// at most MaxDLQErrorLen bytes (less when the other headers need the
	// room: all of them fit in DLQHeaderBudget).
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
	// HeaderDLQID is the Message.ID of the original message (the dead letter
	// has an ID of its own, see DeadLetterID), when it is at most
	// MaxDLQIDLen bytes on one line.
	HeaderDLQID = "busway-dlq-id"
)

// Limits of what DeadLetter adds, so that a dead letter fits wherever its
// original fitted, give or take DLQHeaderBudget.
const (
	// MaxDLQErrorLen caps the error text in HeaderDLQError: a panic value
	// or a wrapped error chain may be long.
	MaxDLQErrorLen = 256
	// MaxDLQIDLen is the longest original ID written to HeaderDLQID (and
	// to transport.HeaderID when the original had none).
	MaxDLQIDLen = 128
	// DLQHeaderBudget bounds the bytes (names and values) of all the
	// headers DeadLetter adds.
	DLQHeaderBudget = 1024
)

// DeadLetterOptions configure DeadLetter. The zero value means the defaults.
type DeadLetterOptions struct {
	// Topic names the dead-letter topic for a message consumed from topic.
	// Default DLQTopic: "<topic>.dlq". Every group shares it; the group is
	// in HeaderDLQGroup.
	Topic func(topic string) string
	// Now is the clock for HeaderDLQTime. Default time.Now.
	Now func() time.Time
	// OnUnpublishable is called when the dead letter itself cannot be
	// published for good (the broker refuses it as too large or invalid,
	// even stripped to its essential headers): the message can neither be
	// handled nor dead-lettered. Returning nil acknowledges the original:
	// it is dropped, after the hook had the chance to keep it elsewhere.
	// Returning an error leaves it unacknowledged, so it is delivered again
	// (and blocks its key each time, on Kafka its partition too).
	// Default nil: the original is dropped and acknowledged, logged at
	// level Error on Logger with what is needed to find it again.
	OnUnpublishable func(ctx context.Context, m *transport.Message, err error) error
	// Logger receives that Error record. Default slog.Default(): dropping a
	// message must never be silent.
	Logger *slog.Logger
}

// DLQTopic is the default dead-letter topic name: topic + ".dlq".
func DLQTopic(topic string) string { return topic + ".dlq" }

// dlqNamespace is the UUID namespace of DeadLetterID.
var dlqNamespace = uuid.MustParse("6f1d2a0e-9c1b-5d7e-8a44-0b5e6d7c8f90")

// DeadLetterID returns the Message.ID of the dead letter of the message
// with ID id consumed from topic by group: a name-based UUID (version 5) of
// the three, or "" when id is "". It is deterministic, so a re-send of one
// dead letter is a true re-send (NATS drops it as a duplicate), and
// different for each group and source topic, so that two groups' dead
// letters of one message are two messages. The event's identity stays in
// transport.HeaderID (ce_id), which DeadLetter keeps.
func DeadLetterID(id, topic, group string) string {
	if id == "" {
		return ""
	}
	return uuid.NewSHA1(dlqNamespace, []byte(id+"\x00"+topic+"\x00"+group)).String()
}

// DeadLetter publishes a message whose inner chain failed (retries
// exhausted, or a permanent error at once) through pub to its dead-letter
// topic, then acknowledges it by returning nil.
//
// The dead letter is a copy of the message: same Key, Body and headers,
// plus the HeaderDLQ* headers, so that it can be inspected and replayed. It
// has an ID of its own (DeadLetterID), as it is a new message and not a
// re-send of the original; the event's ID stays in transport.HeaderID
// (ce_id), which is set to the original ID when the original had none, so
// an idempotent consumer still recognises the event; HeaderDLQID has the
// original Message.ID. A replay of it must get a new ID too, keeping ce_id.
//
// It is built to be publishable wherever the original was: the headers it
// adds take at most DLQHeaderBudget bytes; a copied header whose name a
// transport would refuse (transport.ValidHeaderName) is renamed with its
// refused bytes percent-encoded (a name a transport reserves, such as
// "Nats-Msg-Id", with its first byte: "%4Eats-Msg-Id";
// OriginalHeaderName reverses it), and a copied value or Key that a
// transport would change (transport.HeaderValueError) is changed as NATS
// changes it: line breaks become spaces, white space at its ends goes. If
// the broker still refuses it for good (transport.
// ErrMessageTooLarge, ErrInvalidMessage or a permanent error: the original
// was near the size limit), DeadLetter publishes it once more stripped to
// the short headers (group, topic, attempts, original ID). If that fails
// for good too, retrying cannot help: the message could only block its key
// (on Kafka its partition) for ever, so OnUnpublishable decides; by default
// the message is dropped and acknowledged, logged at level Error with its
// topic, group, IDs, size and both errors.
//
// If the publish fails otherwise (the broker is unavailable), DeadLetter
// returns the handler error joined with a *DeadLetterError, so the original
// is not acknowledged and is delivered again: nothing is lost. When ctx has
// ended (the subscription is closing), it does not dead-letter but returns
// the error, so the message is redelivered after the restart instead of
// being parked. A nil pub makes every failure an error wrapping
// transport.ErrInvalidOptions, so nothing is acknowledged by mistake.
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
			d := deadLetter(m, err, now())
			perr := pub.Publish(ctx, topic, d)
			if perr != nil && unpublishable(perr) {
				// Too large or refused: once more with the short headers only.
				strip(d)
				if perr2 := pub.Publish(ctx, topic, d); perr2 == nil {
					perr = nil
				} else {
					perr = errors.Join(perr, perr2)
					if !unpublishable(perr2) {
						return errors.Join(err, &DeadLetterError{Topic: topic, Err: perr})
					}
					return opts.unpublishable(ctx, m, topic, err, &DeadLetterError{Topic: topic, Err: perr})
				}
			}
			if perr != nil {
				return errors.Join(err, &DeadLetterError{Topic: topic, Err: perr})
			}
			if r := reportFrom(ctx); r != nil {
				r.deadLettered, r.dlqTopic, r.err, r.attempts = true, topic, err, Attempts(err)
			}
			return nil
		}
	}
}

// unpublishable reports whether a publish error is one that publishing the
// same message again cannot fix.
func unpublishable(err error) bool {
	return errors.Is(err, transport.ErrMessageTooLarge) || errors.Is(err, transport.ErrInvalidMessage) || transport.IsPermanent(err)
}

// unpublishable handles a message whose dead letter cannot be published.
func (o DeadLetterOptions) unpublishable(ctx context.Context, m *transport.Message, topic string, herr error, derr *DeadLetterError) error {
	if o.OnUnpublishable != nil {
		if err := o.OnUnpublishable(ctx, m, errors.Join(herr, derr)); err != nil {
			return errors.Join(herr, derr, err)
		}
	} else {
		log := o.Logger
		if log == nil {
			log = slog.Default()
		}
		log.LogAttrs(ctx, slog.LevelError, "busway: dead letter cannot be published; message dropped",
			slog.String("topic", m.Topic), slog.String("group", m.Group), slog.String("id", m.ID),
			slog.String("event_id", m.Header[transport.HeaderID]), slog.String("key", m.Key),
			slog.Int("body_bytes", len(m.Body)), slog.Int("headers", len(m.Header)),
			slog.String("dlq_topic", topic), slog.Any("error", herr), slog.Any("dlq_error", derr.Err))
	}
	if r := reportFrom(ctx); r != nil {
		r.dropped, r.err, r.attempts = true, herr, Attempts(herr)
	}
	return nil
}

// deadLetter builds the dead letter of m, which failed with err at t.
func deadLetter(m *transport.Message, err error, t time.Time) *transport.Message {
	d := &transport.Message{ID: DeadLetterID(m.ID, m.Topic, m.Group), Key: headerValue(m.Key), Body: bytes.Clone(m.Body), Header: make(map[string]string, len(m.Header)+9)}
	for k, v := range m.Header {
		if strings.HasPrefix(k, dlqPrefix) {
			continue // of an earlier dead-lettering: this one's replace them
		}
		d.Header[headerName(k)] = headerValue(v)
	}
	if len(m.ID) <= MaxDLQIDLen && transport.HeaderValueError(m.ID) == nil { // a header value every transport carries
		if m.ID != "" {
			d.Header[HeaderDLQID] = m.ID
		}
		if d.Header[transport.HeaderID] == "" && m.ID != "" {
			d.Header[transport.HeaderID] = m.ID // the event's identity, which the new ID no longer carries
		}
	}
	d.Header[HeaderDLQAttempts] = strconv.Itoa(Attempts(err))
	if m.Attempt > 0 {
		d.Header[HeaderDLQDelivery] = strconv.Itoa(m.Attempt)
	}
	d.Header[HeaderDLQGroup] = headerValue(oneLine(m.Group, transport.MaxNameLength))
	d.Header[HeaderDLQTopic] = headerValue(oneLine(m.Topic, transport.MaxNameLength))
	d.Header[HeaderDLQTime] = t.UTC().Format(time.RFC3339Nano)
	if transport.IsPermanent(err) {
		d.Header[HeaderDLQPermanent] = "true"
	}
	used := len(HeaderDLQError)
	for k, v := range d.Header {
		if strings.HasPrefix(k, dlqPrefix) {
			used += len(k) + len(v)
		}
	}
	if _, ok := m.Header[transport.HeaderID]; !ok {
		used += len(transport.HeaderID) + len(d.Header[transport.HeaderID])
	}
	if room := min(MaxDLQErrorLen, DLQHeaderBudget-used); room > 0 {
		d.Header[HeaderDLQError] = headerValue(oneLine(err.Error(), room))
	}
	return d
}

// dlqPrefix starts every HeaderDLQ* name.
const dlqPrefix = "busway-dlq-"

// strip removes the long headers DeadLetter added (the error text and the
// time), keeping group, topic, attempts and the original ID.
func strip(d *transport.Message) {
	delete(d.Header, HeaderDLQError)
	delete(d.Header, HeaderDLQTime)
	delete(d.Header, HeaderDLQDelivery)
}

// headerValue is v as a header value every transport delivers as it is
// (transport.HeaderValueError), changed as nats.go would change it: line
// breaks as spaces, no white space at the ends. A value that came from
// another transport (Kafka carries any) would otherwise make the dead
// letter unpublishable on NATS. It is never longer than v.
func headerValue(v string) string {
	if transport.HeaderValueError(v) == nil {
		return v
	}
	b := []byte(v) // bytes, not runes: invalid UTF-8 stays as it was
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return strings.Trim(string(b), " \t")
}

// headerName returns name, or, when some transport would refuse it, name
// with each refused byte percent-encoded ("%" itself too, so it stays
// reversible), and the first byte too when the name is one a transport
// reserves ("Nats-…", "ce-…").
func headerName(name string) string {
	if transport.ValidHeaderName(name) && !strings.Contains(name, "%") {
		return name
	}
	if name == "" {
		return "%"
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '%' || !transport.ValidHeaderName(name[i:i+1]) {
			writeEscaped(&b, c)
			continue
		}
		b.WriteByte(name[i])
	}
	if enc := b.String(); transport.ValidHeaderName(enc) {
		return enc
	}
	var r strings.Builder
	writeEscaped(&r, name[0]) // a reserved name: escaping its first byte frees it
	r.WriteString(b.String()[1:])
	return r.String()
}

func writeEscaped(b *strings.Builder, c byte) {
	const hexdigits = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hexdigits[c>>4])
	b.WriteByte(hexdigits[c&0xf])
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

// oneLine replaces line breaks with spaces so the text is a valid header
// value on every broker, and truncates it to max bytes on a rune boundary.
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

// DeadLetterInfo is what DeadLetter recorded on a dead letter (the
// HeaderDLQ* headers), as ParseDeadLetter reads it. Absent headers leave
// their field zero.
type DeadLetterInfo struct {
	Topic      string    // HeaderDLQTopic: where the original was consumed
	Group      string    // HeaderDLQGroup: the group that failed
	Error      string    // HeaderDLQError: the last error, on one line, maybe cut
	OriginalID string    // HeaderDLQID: the original Message.ID
	Attempts   int       // HeaderDLQAttempts: handler calls in the delivery that gave up
	Delivery   int       // HeaderDLQDelivery: the transport's delivery count
	Permanent  bool      // HeaderDLQPermanent
	Time       time.Time // HeaderDLQTime: when it was dead-lettered
}

// ErrNotDeadLetter is wrapped by ParseDeadLetter's error for headers
// without HeaderDLQTopic: not a message DeadLetter wrote.
var ErrNotDeadLetter = errors.New("not a dead letter (no " + HeaderDLQTopic + " header)")

// ParseDeadLetter reads the HeaderDLQ* headers of a dead letter. A message
// without HeaderDLQTopic gives an error wrapping ErrNotDeadLetter; a
// header with a malformed value (attempts that are not a positive number,
// a time that is not RFC 3339, permanent other than "true" or "false")
// gives an error wrapping transport.ErrInvalidMessage that names it, with
// the fields read so far.
func ParseDeadLetter(h map[string]string) (DeadLetterInfo, error) {
	var info DeadLetterInfo
	topic, ok := h[HeaderDLQTopic]
	if !ok {
		return info, ErrNotDeadLetter
	}
	info.Topic, info.Group, info.Error, info.OriginalID = topic, h[HeaderDLQGroup], h[HeaderDLQError], h[HeaderDLQID]
	bad := func(name, why string) error {
		return fmt.Errorf("%w: dead-letter header %s=%q: %s", transport.ErrInvalidMessage, name, oneLine(h[name], 64), why)
	}
	count := func(name string) (int, error) {
		v, ok := h[name]
		if !ok {
			return 0, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return 0, bad(name, "not a positive number")
		}
		return n, nil
	}
	var err error
	if info.Attempts, err = count(HeaderDLQAttempts); err != nil {
		return info, err
	}
	if info.Delivery, err = count(HeaderDLQDelivery); err != nil {
		return info, err
	}
	switch h[HeaderDLQPermanent] {
	case "true":
		info.Permanent = true
	case "", "false":
	default:
		return info, bad(HeaderDLQPermanent, `not "true" or "false"`)
	}
	if ts, ok := h[HeaderDLQTime]; ok {
		if info.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return info, bad(HeaderDLQTime, "not an RFC 3339 time")
		}
	}
	return info, nil
}

// OriginalHeaderName returns the name a header of the original message had,
// given its name on the dead letter (DeadLetter percent-encodes the bytes of
// names some transport would refuse, and "%" itself). A name with no or a
// malformed escape is returned as it is.
func OriginalHeaderName(name string) string {
	if !strings.Contains(name, "%") {
		return name
	}
	if name == "%" {
		return ""
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if name[i] == '%' && i+2 < len(name) {
			hi, lo := unhex(name[i+1]), unhex(name[i+2])
			if hi >= 0 && lo >= 0 {
				b.WriteByte(byte(hi<<4 | lo))
				i += 2
				continue
			}
		}
		b.WriteByte(name[i])
	}
	return b.String()
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c - 'A' + 10)
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	}
	return -1
}
