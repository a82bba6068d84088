package bus

import (
	"fmt"
	"maps"
	"reflect"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/google/uuid"

	"github.com/busway/busway/internal/clock"
	"github.com/busway/busway/transport"
)

// SpecVersion is the CloudEvents version of the envelope busway writes.
const SpecVersion = "1.0"

// Envelope is the CloudEvents 1.0 context of a message: every attribute
// but the data. busway writes it in binary content mode, as headers of
// transport.Message with the canonical names transport.HeaderID,
// transport.HeaderType, ... (each transport renders them in its broker
// binding's spelling on the wire); the data is the message body.
type Envelope struct {
	ID          string    // ce_id; Message.ID as well
	Type        string    // ce_type: the event type name
	Source      string    // ce_source
	Subject     string    // ce_subject, optional
	Time        time.Time // ce_time, RFC 3339 with nanoseconds, UTC
	Key         string    // ce_partitionkey; Message.Key as well
	ContentType string    // content-type of the body (on decode also ce_datacontenttype), optional
	DataSchema  string    // ce_dataschema, optional
	SpecVersion string    // ce_specversion; EncodeEnvelope always writes "1.0"
	// Header holds the message's headers. DecodeEnvelope sets it to the
	// message's own map (envelope attributes included), which the caller
	// must treat as read-only. EncodeEnvelope copies its entries, except
	// the envelope attributes above, which the fields set.
	Header map[string]string
}

// EncodeEnvelope returns a message with e's attributes as headers and body
// as its body. An empty ID becomes a new UUIDv7 and a zero Time the
// current time. Type and Source are required; their absence, a Time
// whose UTC year RFC 3339 cannot write, an attribute or header value that
// some transport would change, or a header name it refuses (see WithKey,
// WithHeader) gives an error wrapping ErrInvalidEnvelope.
func EncodeEnvelope(e Envelope, body []byte) (*transport.Message, error) {
	if e.Type == "" {
		return nil, fmt.Errorf("%w: Type is required", ErrInvalidEnvelope)
	}
	if e.Source == "" {
		return nil, fmt.Errorf("%w: Source is required", ErrInvalidEnvelope)
	}
	for _, f := range [...]struct{ name, v string }{{"ID", e.ID}, {"Type", e.Type}, {"Source", e.Source},
		{"Subject", e.Subject}, {"Key", e.Key}, {"ContentType", e.ContentType}, {"DataSchema", e.DataSchema}} {
		if err := transport.HeaderValueError(f.v); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidEnvelope, f.name, err)
		}
	}
	for k, v := range e.Header {
		if reservedHeader(k) {
			continue // the fields win
		}
		if err := transport.HeaderError(k, v); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidEnvelope, err)
		}
	}
	box, err := buildMessage(&e, e.Header, nil, body)
	if err != nil {
		return nil, err
	}
	return &box.msg, nil
}

// DecodeEnvelope reads the CloudEvents attributes of a delivered message.
// It decodes what is there: a message of a producer that knows nothing of
// CloudEvents gives an Envelope with the ID, Key and Time of the message
// itself and empty attributes. Key is Message.Key, else ce_partitionkey;
// ID is ce_id, else Message.ID; Time is ce_time, else Message.Time;
// ContentType is content-type, else ce_datacontenttype (as CloudEvents
// sdk-go's NATS binding writes it). A nil
// message wraps transport.ErrInvalidMessage; a malformed ce_time or a
// ce_specversion other than 1.x gives an *EnvelopeError.
func DecodeEnvelope(m *transport.Message) (Envelope, error) {
	if m == nil {
		return Envelope{}, fmt.Errorf("%w: nil message", transport.ErrInvalidMessage)
	}
	h := m.Header
	e := Envelope{Key: m.Key, Time: m.Time, Header: h}
	// The attributes every message of busway's has first, counting those
	// present: when they are all of h, the others are absent, and not
	// looked up (each look-up hashes its name).
	var tm string
	var ok bool
	n := 0
	if e.ID, ok = h[transport.HeaderID]; ok {
		n++
	}
	if e.Type, ok = h[transport.HeaderType]; ok {
		n++
	}
	if e.Source, ok = h[transport.HeaderSource]; ok {
		n++
	}
	if e.SpecVersion, ok = h[transport.HeaderSpecVersion]; ok {
		n++
	}
	if tm, ok = h[transport.HeaderTime]; ok {
		n++
	}
	if e.ContentType, ok = h[transport.HeaderContentType]; ok {
		n++
	}
	rest := n < len(h) // h has other headers: the optional attributes may be among them
	if rest {
		e.Subject = h[transport.HeaderSubject]
		e.DataSchema = h[transport.HeaderDataSchema]
	}
	if e.ID == "" {
		e.ID = m.ID
	}
	if e.ContentType == "" && rest {
		// CloudEvents sdk-go's NATS binding writes ce-datacontenttype, not
		// content-type.
		e.ContentType = h[transport.HeaderDataContentType]
	}
	if e.Key == "" && rest {
		e.Key = h[transport.HeaderPartitionKey]
	}
	if v := e.SpecVersion; v != "" && v != SpecVersion && !strings.HasPrefix(v, "1.") {
		return e, &EnvelopeError{Topic: m.Topic, ID: e.ID, Attribute: transport.HeaderSpecVersion, Value: shorten(v),
			Reason: "unsupported CloudEvents version (want 1.0)"}
	}
	if v := tm; v != "" {
		t, err := parseTime(v)
		if err != nil {
			return e, &EnvelopeError{Topic: m.Topic, ID: e.ID, Attribute: transport.HeaderTime, Value: shorten(v),
				Reason: "not an RFC 3339 time"}
		}
		e.Time = t
	}
	return e, nil
}

// Decode decodes a delivered message into an Event[T]: its envelope by
// DecodeEnvelope, its body by c (JSON when c is nil). An empty body gives
// the zero T, as a CloudEvent without data. Every error it returns is
// marked Permanent: an *EnvelopeError (also for a CloudEvent in structured
// content mode, content-type application/cloudevents+json), or a
// *DecodeError naming the topic,
// the event and the Go type when the body does not decode or its
// content-type is not the codec's.
func Decode[T any](c Codec, m *transport.Message) (Event[T], error) {
	return decode[T](c, m, nil, nil)
}

// decode is Decode, decoding the body into a *T of targets when targets
// is not nil (it is zeroed before and after: nothing of one message stays
// in it), so that a handler's decodes need not allocate a T each. With
// flat (the JSON codec's, for T), it tries flat first, straight into the
// Event's Data, and c only when flat gives up.
func decode[T any](c Codec, m *transport.Message, targets *sync.Pool, flat *flatJSON) (Event[T], error) {
	env, err := DecodeEnvelope(m)
	if err != nil {
		return Event[T]{}, transport.Permanent(err)
	}
	if c == nil {
		c = JSON
	}
	ev := Event[T]{
		ID:      env.ID,
		Type:    env.Type,
		Source:  env.Source,
		Subject: env.Subject,
		Time:    env.Time,
		Key:     env.Key,
		Header:  maps.Clone(env.Header), // the Event's own: transports reuse delivered messages
		Topic:   m.Topic,
		Group:   m.Group,
		Attempt: m.Attempt,
	}
	if isStructuredMode(env.ContentType) {
		return ev, transport.Permanent(&EnvelopeError{Topic: m.Topic, ID: env.ID, Attribute: transport.HeaderContentType, Value: shorten(env.ContentType),
			Reason: "a CloudEvent in structured content mode; busway reads binary mode (attributes as headers, data as body)"})
	}
	if !contentTypeMatches(env.ContentType, c.ContentType()) {
		return ev, transport.Permanent(&DecodeError{Topic: m.Topic, ID: env.ID, Type: env.Type, GoType: reflect.TypeFor[T]().String(),
			Err: fmt.Errorf("content-type %q is not the codec's %q", shorten(env.ContentType), c.ContentType())})
	}
	if len(m.Body) > 0 {
		if flat != nil && flat.decode(m.Body, unsafe.Pointer(&ev.Data)) {
			return ev, nil
		}
		var zero T
		ev.Data = zero // what flat wrote before it gave up
		var target *T
		if targets != nil {
			target = targets.Get().(*T)
			*target = zero
		} else {
			target = new(T)
		}
		err := c.Unmarshal(m.Body, target)
		if err == nil {
			ev.Data = *target
		}
		if targets != nil {
			*target = zero
			targets.Put(target)
		}
		if err != nil {
			return ev, transport.Permanent(&DecodeError{Topic: m.Topic, ID: env.ID, Type: env.Type, GoType: reflect.TypeFor[T]().String(), Err: err})
		}
	}
	return ev, nil
}

// msgBox holds a message and the one-element slice Publish passes to the
// transport, so that both cost one allocation.
type msgBox struct {
	msg transport.Message
	arr [1]*transport.Message
}

// header is an extra header given with WithHeader.
type header struct{ name, value string }

// reservedHeader reports whether name is an envelope attribute that the
// Envelope fields set.
func reservedHeader(name string) bool {
	switch name {
	case transport.HeaderID, transport.HeaderSource, transport.HeaderSpecVersion, transport.HeaderType,
		transport.HeaderSubject, transport.HeaderTime, transport.HeaderDataSchema, transport.HeaderPartitionKey,
		transport.HeaderContentType, transport.HeaderDataContentType:
		return true
	}
	return false
}

// buildMessage writes e (ID and Time filled in when empty) and the extra
// headers of hm and hs into a new message. Envelope attributes in hm or hs
// are ignored: the fields win.
func buildMessage(e *Envelope, hm map[string]string, hs []header, body []byte) (*msgBox, error) {
	box := new(msgBox)
	if err := box.fill(e, hm, hs, body, false); err != nil {
		return nil, err
	}
	return box, nil
}

// fill is buildMessage into box, reusing its Header map when it has one.
// same says that the map holds the headers of an envelope of e's shape
// (see envShape), no others: then only the attributes that differ from one
// event to the next are written.
func (box *msgBox) fill(e *Envelope, hm map[string]string, hs []header, body []byte, same bool) error {
	var ts string
	stamped := e.Time.IsZero()
	if stamped {
		e.Time = clock.Now()
	} else if y := e.Time.UTC().Year(); y < 0 || y > 9999 {
		return fmt.Errorf("%w: time %v: year %d is outside RFC 3339's 0000 to 9999", ErrInvalidEnvelope, e.Time, y)
	}
	if e.ID == "" {
		now := e.Time // the ID's time is the event's when it was stamped here
		if !stamped {
			now = clock.Now()
		}
		e.ID, ts = newIDAndTime(now, e.Time)
	} else {
		ts = e.Time.UTC().Format(time.RFC3339Nano)
	}
	n := 6 + len(hm) + len(hs)
	if e.Subject != "" {
		n++
	}
	if e.Key != "" {
		n++
	}
	h := box.msg.Header
	if same && h != nil {
		setEventHeaders(h, e, ts)
		box.msg = transport.Message{ID: e.ID, Key: e.Key, Header: h, Body: body}
		box.arr[0] = &box.msg
		return nil
	}
	if h == nil {
		h = make(map[string]string, n)
	} else {
		clear(h)
	}
	for k, v := range hm {
		if !reservedHeader(k) {
			h[k] = v
		}
	}
	for _, kv := range hs {
		if !reservedHeader(kv.name) {
			h[kv.name] = kv.value
		}
	}
	h[transport.HeaderSpecVersion] = SpecVersion
	h[transport.HeaderSource] = e.Source
	h[transport.HeaderType] = e.Type
	setEventHeaders(h, e, ts)
	if e.ContentType != "" {
		h[transport.HeaderContentType] = e.ContentType
	}
	if e.DataSchema != "" {
		h[transport.HeaderDataSchema] = e.DataSchema
	}
	box.msg = transport.Message{ID: e.ID, Key: e.Key, Header: h, Body: body}
	box.arr[0] = &box.msg
	return nil
}

// setEventHeaders writes the attributes that differ from one event of a
// shape to the next: ID, time (ts), and subject and key when set.
func setEventHeaders(h map[string]string, e *Envelope, ts string) {
	h[transport.HeaderID] = e.ID
	h[transport.HeaderTime] = ts
	if e.Subject != "" {
		h[transport.HeaderSubject] = e.Subject
	}
	if e.Key != "" {
		h[transport.HeaderPartitionKey] = e.Key
	}
}

// newIDAndTime returns a new UUIDv7 for the time now (see newV7) and t in
// RFC 3339 (UTC, nanoseconds), both slices of one string: one allocation
// for the two.
func newIDAndTime(now, t time.Time) (id, ts string) {
	u := newV7(now)
	var buf [36 + len(time.RFC3339Nano) + 8]byte
	b := appendUUID(buf[:0], u)
	b = appendTime(b, t)
	s := string(b)
	return s[:36], s[36:]
}

// appendUUID appends u in its canonical 8-4-4-4-12 hex form.
func appendUUID(b []byte, u uuid.UUID) []byte {
	const hexdigits = "0123456789abcdef"
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, hexdigits[c>>4], hexdigits[c&0xf])
	}
	return b
}
