package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"
	"unsafe"

	"github.com/busway/busway/transport"
)

// PublishOption configures a Publish call; WithKey, WithSubject,
// WithHeader, WithID and WithTime make them. The zero configuration is the
// default. A PublishOption is a small value, so that options cost no
// allocation on the publish path.
type PublishOption struct {
	kind  pubOptKind
	a, b  string
	time  time.Time
	keyFn any // func(T) string of WithKeyFunc
	err   error
}

type pubOptKind uint8

const (
	pubOptNone pubOptKind = iota
	pubOptKey
	pubOptSubject
	pubOptHeader
	pubOptID
	pubOptTime
	pubOptKeyFunc
)

type pubConfig struct {
	key, subject, id string
	time             time.Time
	headers          []header
	keyFn            any
	err              error
}

func (o PublishOption) apply(c *pubConfig) {
	switch o.kind {
	case pubOptKey:
		c.key = o.a
	case pubOptSubject:
		c.subject = o.a
	case pubOptHeader:
		c.headers = append(c.headers, header{o.a, o.b})
	case pubOptID:
		c.id = o.a
	case pubOptTime:
		c.time = o.time
	case pubOptKeyFunc:
		c.keyFn = o.keyFn
	}
	if o.err != nil {
		c.err = errors.Join(c.err, o.err)
	}
}

// WithKey sets the event's key (the CloudEvents partitionkey, the Kafka
// record key): events with the same key are handled one at a time, in
// publish order, by each group. Default: no key, no order.
//
// A key, subject, ID or header value travels as a header on some broker
// (NATS), so each must be one that every transport delivers as it is
// (transport.HeaderValueError: no line break, no white space at its
// ends); another is an error wrapping ErrInvalidOptions, on every
// transport, chanbus included, so that a unit test finds it.
func WithKey(key string) PublishOption {
	if err := attrValue("WithKey", key); err != nil {
		return PublishOption{err: err}
	}
	return PublishOption{kind: pubOptKey, a: key}
}

// WithSubject sets the CloudEvents subject: what, within the source, the
// event is about (an order ID, a file name). Default: none. See WithKey
// for the values it takes.
func WithSubject(subject string) PublishOption {
	if err := attrValue("WithSubject", subject); err != nil {
		return PublishOption{err: err}
	}
	return PublishOption{kind: pubOptSubject, a: subject}
}

// attrValue is the error of option opt given a value some transport would
// change (see WithKey), or nil.
func attrValue(opt, v string) error {
	if err := transport.HeaderValueError(v); err != nil {
		return fmt.Errorf("%w: %s(%q): %v", ErrInvalidOptions, opt, v, err)
	}
	return nil
}

// WithHeader adds a message header, such as a CloudEvents extension
// ("ce_tenant") or an application header. The envelope's own attributes
// (ce_id, ce_type, ce_source, ce_specversion, ce_time, ce_subject,
// ce_dataschema, ce_partitionkey, content-type) cannot be set this way:
// that and an empty name are errors wrapping ErrInvalidOptions, as are a
// name that some transport refuses (transport.ValidHeaderName: printable
// ASCII without spaces or separators) and a value it would change (see
// WithKey). Default: no extra headers.
func WithHeader(name, value string) PublishOption {
	switch {
	case name == "":
		return PublishOption{err: fmt.Errorf("%w: WithHeader: empty header name", ErrInvalidOptions)}
	case reservedHeader(name):
		return PublishOption{err: fmt.Errorf("%w: WithHeader(%q): an envelope attribute, set by the bus (use WithKey, WithSubject, WithID, WithTime)", ErrInvalidOptions, name)}
	}
	if err := transport.HeaderError(name, value); err != nil {
		return PublishOption{err: fmt.Errorf("%w: WithHeader: %v", ErrInvalidOptions, err)}
	}
	return PublishOption{kind: pubOptHeader, a: name, b: value}
}

// WithID sets the event ID, for example to publish an event again under
// the ID it had (brokers and the Idempotent middleware drop duplicates by
// ID). Default: a new UUIDv7. See WithKey for the values it takes.
func WithID(id string) PublishOption {
	if err := attrValue("WithID", id); err != nil {
		return PublishOption{err: err}
	}
	return PublishOption{kind: pubOptID, a: id}
}

// WithTime sets the event time. Default: the time of the Publish call.
func WithTime(t time.Time) PublishOption { return PublishOption{kind: pubOptTime, time: t} }

// WithKeyFunc sets the key of each event to key(event), for PublishBatch
// (or Publish); it overrides WithKey. T must be the type of the events
// published, else Publish returns an error wrapping ErrInvalidOptions.
// Default: no key function.
func WithKeyFunc[T any](key func(T) string) PublishOption {
	if key == nil {
		return PublishOption{err: fmt.Errorf("%w: WithKeyFunc: nil function", ErrInvalidOptions)}
	}
	return PublishOption{kind: pubOptKeyFunc, keyFn: key}
}

// Publish publishes v as an event of type T to T's topic (see Register),
// and returns once the transport accepted it (for brokers: durably). It
// returns an error wrapping ErrClosed after Shutdown finished (handlers
// still draining during Shutdown may publish), the context's error as it
// is, and otherwise an error naming the event type.
func Publish[T any](ctx context.Context, b *Bus, v T, opts ...PublishOption) error {
	if b != nil && b.recycle {
		return publishRecycled(ctx, b, v, opts)
	}
	ti, box, err := newMessage(b, v, opts)
	if err != nil {
		return err
	}
	return b.publishBox(ctx, ti, box)
}

// publishBox sends box's message to ti's topic.
func (b *Bus) publishBox(ctx context.Context, ti *typeInfo, box *msgBox) error {
	if err := b.pub.Publish(ctx, ti.topic, box.arr[:]...); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return err
		}
		return fmt.Errorf("busway: publish %s to topic %q: %w", ti.name, ti.topic, err)
	}
	b.published.Add(1)
	return nil
}

// publishRecycled is Publish on a transport.PublishCopier with the JSON
// codec (Bus.recycle): the publisher keeps nothing of the message once it
// returned, so the message, its Header map and its body buffer are
// recycled for a later Publish.
func publishRecycled[T any](ctx context.Context, b *Bus, v T, opts []PublishOption) error {
	ti, c, err := prepare[T](b, opts)
	if err != nil {
		return err
	}
	box := pubBoxes.Get().(*pubBox)
	defer box.recycle()
	var body []byte
	if ti.flat != nil && ti.flat.encodes && reflect.TypeFor[T]() == ti.rt {
		// The flat encoder reads v where it is (no copy of it in an
		// interface, which cost an allocation).
		if out, ok := ti.flat.encode(box.flatBuf[:0], unsafe.Pointer(&v)); ok {
			box.flatBuf, body = out, out
		}
	}
	if body == nil {
		if body, err = marshal(box, v); err != nil {
			return fmt.Errorf("busway: publish %s: %w", ti.name, err)
		}
	}
	if err := fillEvent(b, ti, &c, v, body, &box.msgBox, &box.shape); err != nil {
		return fmt.Errorf("busway: publish %s: %w", ti.name, err)
	}
	return b.publishBox(ctx, ti, &box.msgBox)
}

// pubBox is a message Publish recycles (see publishRecycled), with the
// buffer and JSON encoder of its body, and the buffer of the flat
// encoder's output (see flatJSON).
type pubBox struct {
	msgBox
	buf     bytes.Buffer
	enc     *json.Encoder
	flatBuf []byte   // the flat encoder's output
	shape   envShape // what msg.Header holds
}

var pubBoxes = sync.Pool{New: func() any {
	box := new(pubBox)
	box.enc = json.NewEncoder(&box.buf)
	return box
}}

// Limits on what a recycled pubBox keeps, so that one large event does
// not pin its memory in the pool.
const (
	maxRecycledBody   = 64 << 10
	maxRecycledHeader = 64
)

// Marshal encodes v as json.Marshal does (the JSON codec's Marshal), into
// box's buffer: Encoder.Encode writes the same bytes, HTML escaping
// included, and a newline, which is cut.
func (box *pubBox) Marshal(v any) ([]byte, error) {
	box.buf.Reset()
	if err := box.enc.Encode(v); err != nil {
		return nil, err
	}
	body := box.buf.Bytes()
	return body[:len(body)-1], nil
}

// recycle returns box to the pool, without what it referred to.
func (box *pubBox) recycle() {
	h := box.msg.Header
	if len(h) > maxRecycledHeader {
		h = nil
	}
	box.msg = transport.Message{Header: h} // not cleared: box.shape says what it holds
	box.arr[0] = nil
	if h == nil {
		box.shape = envShape{}
	}
	if box.buf.Cap() > maxRecycledBody {
		box.buf = bytes.Buffer{}
	}
	if cap(box.flatBuf) > maxRecycledBody {
		box.flatBuf = nil
	}
	pubBoxes.Put(box)
}

// NewMessage returns the message Publish would send for v, and its topic,
// without sending it: for an outbox that stores messages to relay later,
// or for tests of code that consumes raw messages.
func NewMessage[T any](b *Bus, v T, opts ...PublishOption) (topic string, m *transport.Message, err error) {
	ti, box, err := newMessage(b, v, opts)
	if err != nil {
		return "", nil, err
	}
	return ti.topic, &box.msg, nil
}

// PublishBatch publishes events, all of type T, to T's topic in one
// transport call, which brokers send as one batch: one round trip instead
// of one per event. opts apply to every event (use WithKeyFunc for keys of
// their own; WithID is an error, as IDs must differ). It returns once the
// transport accepted every event, or an error; a *transport.PublishError
// (errors.As) lists the events the transport did not accept, the others
// were published. An empty batch does nothing.
func PublishBatch[T any](ctx context.Context, b *Bus, events []T, opts ...PublishOption) error {
	ti, c, err := prepare[T](b, opts)
	if err != nil {
		return err
	}
	if c.id != "" {
		return fmt.Errorf("busway: publish %s: %w: WithID in a batch would give every event one ID", ti.name, ErrInvalidOptions)
	}
	if len(events) == 0 {
		return nil
	}
	msgs := make([]*transport.Message, len(events))
	for i, v := range events {
		box, err := encode(b, ti, &c, v)
		if err != nil {
			return fmt.Errorf("busway: publish batch of %d %s events: event #%d: %w", len(events), ti.name, i, err)
		}
		msgs[i] = &box.msg
	}
	if err := b.pub.Publish(ctx, ti.topic, msgs...); err != nil {
		var pe *transport.PublishError
		if errors.As(err, &pe) {
			b.published.Add(uint64(max(0, len(msgs)-len(pe.Failures))))
		}
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) && pe == nil {
			return err
		}
		return fmt.Errorf("busway: publish %d %s events to topic %q: %w", len(msgs), ti.name, ti.topic, err)
	}
	b.published.Add(uint64(len(msgs)))
	return nil
}

func newMessage[T any](b *Bus, v T, opts []PublishOption) (*typeInfo, *msgBox, error) {
	ti, c, err := prepare[T](b, opts)
	if err != nil {
		return nil, nil, err
	}
	box, err := encode(b, ti, &c, v)
	if err != nil {
		return nil, nil, fmt.Errorf("busway: publish %s: %w", ti.name, err)
	}
	return ti, box, nil
}

// prepare checks the bus, resolves T and applies opts.
func prepare[T any](b *Bus, opts []PublishOption) (*typeInfo, pubConfig, error) {
	var c pubConfig
	if err := b.Err(); err != nil {
		return nil, c, err
	}
	ti, err := b.typeOf(reflect.TypeFor[T](), "")
	if err != nil {
		return nil, c, fmt.Errorf("busway: publish: %w", err)
	}
	if b.state.Load() == stateClosed {
		return nil, c, fmt.Errorf("busway: publish %s: %w: the bus is shut down", ti.name, ErrClosed)
	}
	for _, o := range opts {
		o.apply(&c)
	}
	if c.keyFn != nil {
		if _, ok := c.keyFn.(func(T) string); !ok {
			c.err = errors.Join(c.err, fmt.Errorf("%w: WithKeyFunc takes a %T, the events are %v", ErrInvalidOptions, c.keyFn, reflect.TypeFor[T]()))
		}
	}
	if c.err != nil {
		return nil, c, fmt.Errorf("busway: publish %s: %w", ti.name, c.err)
	}
	return ti, c, nil
}

// encode builds the message of one event.
func encode[T any](b *Bus, ti *typeInfo, c *pubConfig, v T) (*msgBox, error) {
	body, err := marshal(b.codec, v)
	if err != nil {
		return nil, err
	}
	box := new(msgBox)
	if err := fillEvent(b, ti, c, v, body, box, nil); err != nil {
		return nil, err
	}
	return box, nil
}

// marshaler encodes event data: a Codec, or a recycled pubBox.
type marshaler interface {
	Marshal(v any) ([]byte, error)
}

// marshal encodes v with m; a nil pointer is an error.
func marshal[T any](m marshaler, v T) ([]byte, error) {
	if rt := reflect.TypeFor[T](); rt.Kind() == reflect.Pointer && reflect.ValueOf(any(v)).IsNil() {
		return nil, fmt.Errorf("%w: nil %v", transport.ErrInvalidMessage, rt)
	}
	body, err := m.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return body, nil
}

// fillEvent builds the message of one event in box, with body, the
// encoded v. shape, when not nil, describes box's recycled Header map
// (see envShape), and is updated.
func fillEvent[T any](b *Bus, ti *typeInfo, c *pubConfig, v T, body []byte, box *msgBox, shape *envShape) error {
	key := c.key
	if c.keyFn != nil {
		key = c.keyFn.(func(T) string)(v)
	}
	env := Envelope{
		ID:          c.id,
		Type:        ti.name,
		Source:      b.source,
		Subject:     c.subject,
		Time:        c.time,
		Key:         key,
		ContentType: b.codec.ContentType(),
	}
	if shape == nil {
		return box.fill(&env, nil, c.headers, body, false)
	}
	cur := envShape{b: b, ti: ti, subject: env.Subject != "", key: env.Key != ""}
	if len(c.headers) > 0 {
		cur = envShape{} // extra headers: never the same keys as another message's
	}
	same := cur.b != nil && *shape == cur
	*shape = envShape{}
	if err := box.fill(&env, nil, c.headers, body, same); err != nil {
		return err
	}
	*shape = cur
	return nil
}

// envShape says which envelope a recycled message's Header map holds: that
// of an event of type ti published on bus b, with or without a subject and
// a key, and no other header. A message of the same shape has the same
// header names and the same values for all but ce_id, ce_time, ce_subject
// and ce_partitionkey, so that fill writes only those.
type envShape struct {
	b            *Bus
	ti           *typeInfo
	subject, key bool
}
