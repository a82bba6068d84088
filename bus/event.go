package bus

import (
	"fmt"
	"reflect"
	"time"
	"unicode"
	"unicode/utf8"
)

// Event is a typed event as a handler receives it: the CloudEvents
// attributes of its envelope, where it was delivered, and the decoded data.
type Event[T any] struct {
	ID      string    // ce_id: a UUIDv7 when busway published it
	Type    string    // ce_type: the event type name
	Source  string    // ce_source: who published it (WithSource)
	Subject string    // ce_subject: what it is about (WithSubject), optional
	Time    time.Time // ce_time: when it was published
	Key     string    // the ordering key (WithKey), ce_partitionkey
	// Header holds every header of the message, the envelope attributes
	// (ce_id, ce_type, ...) and content-type included. It is the Event's own
	// copy: a handler may keep the Event, Header included.
	Header map[string]string
	Data   T // the decoded body

	Topic   string // the topic it was delivered from
	Group   string // the group it was delivered to
	Attempt int    // 1 the first time, counted up on redelivery where the transport counts
}

// EventTyper is implemented by event types that name themselves. Without
// it, the event type name of T is its Go type name (without package, and
// without the '*' of a pointer type).
type EventTyper interface {
	EventType() string
}

// EventTypeOf returns the event type name of T: T's EventType method if it
// has one (called on a pointer to a zero T), else the name of the Go type.
// It returns an error wrapping ErrInvalidEventType for an unnamed type
// without an EventType method, or a name that is empty, longer than 255
// bytes, not UTF-8, or has spaces or control characters.
func EventTypeOf[T any]() (string, error) {
	return eventTypeName(reflect.TypeFor[T]())
}

func eventTypeName(rt reflect.Type) (name string, err error) {
	switch {
	case rt.Kind() == reflect.Interface:
		return "", fmt.Errorf("%w: Go type %v is an interface: events need a concrete type", ErrInvalidEventType, rt)
	case rt.Kind() == reflect.Pointer && rt.Implements(eventTyperType):
		name, err = callEventType(rt, reflect.New(rt.Elem()))
	case rt.Kind() != reflect.Pointer && reflect.PointerTo(rt).Implements(eventTyperType):
		name, err = callEventType(rt, reflect.New(rt))
	default:
		t := rt
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		name = t.Name()
		if name == "" {
			return "", fmt.Errorf("%w: Go type %v has no name: give it an EventType() string method", ErrInvalidEventType, rt)
		}
	}
	if err != nil {
		return "", err
	}
	if reason := checkEventType(name); reason != "" {
		return "", fmt.Errorf("%w: %q of Go type %v: %s", ErrInvalidEventType, shorten(name), rt, reason)
	}
	return name, nil
}

// callEventType calls the EventType method of v (a pointer to a zero
// value), turning a panic into an error.
func callEventType(rt reflect.Type, v reflect.Value) (name string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: EventType method of Go type %v panicked on a zero value: %v", ErrInvalidEventType, rt, r)
		}
	}()
	return v.Interface().(EventTyper).EventType(), nil
}

var eventTyperType = reflect.TypeFor[EventTyper]()

func checkEventType(s string) string {
	switch {
	case s == "":
		return "empty"
	case len(s) > 255:
		return "longer than 255 bytes"
	case !utf8.ValidString(s):
		return "not valid UTF-8"
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Sprintf("has space or control character %q", r)
		}
	}
	return ""
}
