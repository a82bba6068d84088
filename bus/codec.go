package bus

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
)

// Codec encodes event data into message bodies and back. A Bus uses one
// codec for every event it publishes and handles; its ContentType is sent
// as the message's content-type header.
//
// A Codec is used concurrently by many goroutines and must be safe for
// that.
type Codec interface {
	// ContentType is the media type of the bodies Marshal produces, e.g.
	// "application/json".
	ContentType() string
	// Marshal encodes v. v is the event value as given to Publish.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, a non-nil pointer.
	Unmarshal(data []byte, v any) error
}

// JSON is the default codec: encoding/json, content type
// "application/json". A Subscribe handler whose event type is a flat
// struct (exported fields of string, bool, integer and float kinds, none
// decoding itself) decodes plain bodies (no string escapes, every key a
// field's exact name) in one pass of its own, to the value and error
// encoding/json gives, and any other body with encoding/json.
var JSON Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) ContentType() string           { return "application/json" }
func (jsonCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal is json.Unmarshal, with its results and errors, but decodes
// small bodies with a pooled json.Decoder, which keeps its scanner and
// decoding state between calls: four allocations fewer per message.
func (jsonCodec) Unmarshal(data []byte, v any) error {
	// Trailing white space would stay in the decoder's buffer; drop it.
	for len(data) > 0 && isJSONSpace(data[len(data)-1]) {
		data = data[:len(data)-1]
	}
	if len(data) == 0 || len(data) > maxPooledJSON {
		return json.Unmarshal(data, v)
	}
	d := jsonDecoders.Get().(*jsonDecoder)
	d.r.Reset(data)
	start := d.dec.InputOffset()
	err := d.dec.Decode(v)
	if err != nil || d.dec.InputOffset()-start != int64(len(data)) {
		// A syntax error (sticky in a Decoder), or data after the value: let
		// json.Unmarshal give its own error. The decoder is not reused.
		return json.Unmarshal(data, v)
	}
	jsonDecoders.Put(d)
	return nil
}

// isJSONSpace reports whether c is white space in JSON (RFC 8259).
func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// maxPooledJSON bounds the bodies decoded by pooled decoders, which keep a
// buffer as large as the largest body they decoded.
const maxPooledJSON = 64 << 10

type jsonDecoder struct {
	r   bytes.Reader
	dec *json.Decoder
}

var jsonDecoders = sync.Pool{New: func() any {
	d := new(jsonDecoder)
	d.dec = json.NewDecoder(&d.r)
	return d
}}

// contentTypeMatches reports whether a message's content-type header got
// may be decoded by a codec whose content type is want. Parameters
// (";charset=utf-8") and case are ignored; an empty got matches anything,
// and any "+json" or "text/json" type matches "application/json".
func contentTypeMatches(got, want string) bool {
	if got == "" || got == want || want == "" {
		return true
	}
	g, w := mediaType(got), mediaType(want)
	if strings.EqualFold(g, w) {
		return true
	}
	if strings.EqualFold(w, "application/json") {
		lg := strings.ToLower(g)
		return strings.HasSuffix(lg, "+json") || lg == "text/json"
	}
	return false
}

func mediaType(s string) string {
	if i := strings.IndexByte(s, ';'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// isStructuredMode reports whether a content-type is that of a CloudEvent
// in structured (or batched) content mode, whose body is the whole event.
func isStructuredMode(ct string) bool {
	if len(ct) < len("application/cloudevents") {
		return false
	}
	mt := strings.ToLower(mediaType(ct))
	return strings.HasPrefix(mt, "application/cloudevents+") || strings.HasPrefix(mt, "application/cloudevents-batch+")
}
