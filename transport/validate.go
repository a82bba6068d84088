package transport

import (
	"errors"
	"fmt"
	"strings"
)

// MaxNameLength is the longest topic or group name accepted; Kafka's limit.
const MaxNameLength = 249

// ValidateTopic checks that topic is a name every busway transport accepts:
// 1 to 249 characters of ASCII letters, digits, '.', '_' and '-' (Kafka's
// rule, the strictest; NATS subjects and channels accept all of them). It
// wraps ErrInvalidTopic.
func ValidateTopic(topic string) error {
	if err := checkName(topic); err != "" {
		return fmt.Errorf("%w %q: %s", ErrInvalidTopic, topic, err)
	}
	return nil
}

// ValidateName checks a group or other name by the same rule as topics,
// wrapping ErrInvalidOptions and naming what (e.g. "Group").
func ValidateName(what, name string) error {
	if err := checkName(name); err != "" {
		return fmt.Errorf("%w: %s %q: %s", ErrInvalidOptions, what, name, err)
	}
	return nil
}

func checkName(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > MaxNameLength {
		return fmt.Sprintf("%d characters, more than %d", len(s), MaxNameLength)
	}
	if s == "." || s == ".." {
		return "not a valid name"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' {
			continue
		}
		return fmt.Sprintf("character %q at %d is not allowed (use letters, digits, '.', '_', '-')", rune(c), i)
	}
	if s[0] == '.' || s[len(s)-1] == '.' {
		return "must not start or end with '.'"
	}
	for i := 1; i < len(s); i++ {
		if s[i] == '.' && s[i-1] == '.' {
			return "must not contain \"..\""
		}
	}
	return ""
}

// ValidatePublish checks a Publish call's topic and messages: a valid topic
// and no nil message. Transports call it first.
func ValidatePublish(topic string, msgs []*Message) error {
	if err := ValidateTopic(topic); err != nil {
		return err
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("%w: message #%d of %d is nil", ErrInvalidMessage, i, len(msgs))
		}
	}
	return nil
}

// ValidateSubscribe checks a Subscribe call's topic, handler and options,
// wrapping ErrInvalidTopic or ErrInvalidOptions. Transports call it first.
func ValidateSubscribe(topic string, h Handler, opts SubscribeOptions) error {
	if err := ValidateTopic(topic); err != nil {
		return err
	}
	if err := opts.Validate(); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: nil Handler for topic %q", ErrInvalidOptions, topic)
	}
	return nil
}

// headerNameForbidden are the printable ASCII characters nats.go refuses in
// a header name (its ADR-4 rule, slightly stricter: the HTTP separators).
const headerNameForbidden = "\"()/,:;<=>?@[\\]{}"

// ValidHeaderName reports whether name is a header name every busway
// transport carries as it is: one or more printable ASCII characters (33
// to 126) other than "()/,:;<=>?@[\]{} and the double quote, which is
// nats.go's rule, the strictest of the brokers' clients (Kafka takes any
// string), and none of the names a transport or broker uses itself:
// "Nats-…" in any case, "ce-…" and "busway-id" (see HeaderNameError).
func ValidHeaderName(name string) bool { return HeaderNameError(name) == nil }

// HeaderNameError says why ValidHeaderName refuses name, or is nil. It is a
// description, not wrapped in ErrInvalidMessage, for a transport that puts
// it in its own error. A name a transport or broker uses itself would be
// lost, renamed or obeyed rather than delivered:
//   - "Nats-…", in any case: the JetStream server reads these headers
//     (Nats-Msg-Id deduplicates; Nats-Expected-Stream, Nats-Rollup and
//     Nats-TTL direct the store).
//   - "ce-…": the NATS spelling of the CloudEvents attributes; NATS
//     delivers it as "ce_…", as a CloudEvents producer on NATS means it.
//   - "busway-id": the header in which Kafka carries Message.ID.
func HeaderNameError(name string) error {
	if name == "" {
		return errors.New("empty header name")
	}
	if i := badHeaderNameByte(name); i >= 0 {
		return fmt.Errorf("header name %q: character %q at %d is not allowed (printable ASCII other than space and %s)",
			name, rune(name[i]), i, headerNameForbidden)
	}
	if why := reservedHeaderName(name); why != "" {
		return fmt.Errorf("header name %q: %s", name, why)
	}
	return nil
}

// reservedHeaderName says why a transport or broker claims name for
// itself (see HeaderNameError), or is "".
func reservedHeaderName(name string) string {
	switch {
	case len(name) >= 5 && strings.EqualFold(name[:5], "nats-"):
		return "reserved by NATS JetStream, whose server reads Nats-* headers"
	case strings.HasPrefix(name, "ce-"):
		return "the NATS spelling of " + HeaderPrefix + name[3:] + ", which NATS delivers under that name; use it"
	case name == "busway-id":
		return "reserved: busway's Kafka transport carries Message.ID in it"
	}
	return ""
}

// badHeaderNameByte is the index of name's first byte no transport carries
// in a header name, or -1.
func badHeaderNameByte(name string) int {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || strings.IndexByte(headerNameForbidden, c) >= 0 {
			return i
		}
	}
	return -1
}

// ValidateHeader checks a header by the strictest transport's rule
// (HeaderError). It wraps ErrInvalidMessage and names what was wrong.
func ValidateHeader(name, value string) error {
	if err := HeaderError(name, value); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidMessage, err)
	}
	return nil
}

// HeaderError says why a header is not one every busway transport carries
// unchanged (a name HeaderNameError refuses, a value HeaderValueError
// refuses), or is nil. It is a description, not wrapped in a sentinel, for
// callers that wrap their own (ErrInvalidMessage, bus's ErrInvalidOptions).
func HeaderError(name, value string) error {
	if err := HeaderNameError(name); err != nil {
		return err
	}
	if err := HeaderValueError(value); err != nil {
		return fmt.Errorf("header %q: %v", name, err)
	}
	return nil
}

// HeaderValueError says why value is not a header value every busway
// transport delivers as it was sent, or is nil: NATS headers are lines,
// and nats.go trims a value, so a value must have no CR or LF and no space
// or tab at its start or end (NATS would deliver "a  b" for "a\r\nb" and
// "v" for " v "). It is a description, not wrapped in ErrInvalidMessage.
func HeaderValueError(value string) error {
	// Two IndexByte calls (vectorized) rather than IndexAny (a byte loop
	// for a set): NATS's Publish checks every value of every message.
	lf, cr := strings.IndexByte(value, '\n'), strings.IndexByte(value, '\r')
	if lf >= 0 || cr >= 0 {
		i := lf
		if i < 0 || (cr >= 0 && cr < i) {
			i = cr
		}
		return fmt.Errorf("the value has a line break at %d", i)
	}
	if value != "" && (isBlank(value[0]) || isBlank(value[len(value)-1])) {
		return fmt.Errorf("the value %q starts or ends with white space", value)
	}
	return nil
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }
