package bus

import (
	"bytes"
	"encoding"
	"encoding/binary"
	"encoding/json"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// A flatJSON decodes the commonest event bodies, a JSON object of plain
// strings, numbers and booleans into a flat struct, in one pass and
// without encoding/json's per-byte scanner (which reads a body twice: to
// validate it, then to decode it). It decodes a subset of what
// json.Unmarshal decodes, to the same result: anything else in the input
// (an escape in a string, a key that matches no field exactly, null into
// a non-scalar, a number that does not fit, a syntax error) makes it give
// up, and the caller decodes the body again with json.Unmarshal, which
// then gives its own result or error. It never accepts an input that
// json.Unmarshal rejects.
//
// It exists for types whose every exported field is a string, bool,
// integer or float kind without methods of its own for JSON or text
// (planFlatJSON says which); the JSON handler path of Subscribe uses it.
//
// It also encodes such a struct as json.Marshal does, when encodes is set
// (no field or the type marshals itself, no floats, no omitzero): fields
// in order, omitempty honoured, strings without any byte that encoding/json
// escapes; a string that needs escaping makes it give up, and the caller
// encodes with encoding/json.
type flatJSON struct {
	fields  []flatField
	encodes bool
}

type flatField struct {
	name      string  // the JSON name: exact match only
	offset    uintptr // in the struct
	size      uintptr // of the field's type
	kind      reflect.Kind
	omitEmpty bool
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	jsonMarshalerType   = reflect.TypeFor[json.Marshaler]()
	textMarshalerType   = reflect.TypeFor[encoding.TextMarshaler]()
)

// marshals reports whether t, or a pointer to it, encodes itself.
func marshals(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return t.Implements(jsonMarshalerType) || t.Implements(textMarshalerType) ||
		pt.Implements(jsonMarshalerType) || pt.Implements(textMarshalerType)
}

// unmarshals reports whether t, or a pointer to it, decodes itself.
func unmarshals(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return t.Implements(jsonUnmarshalerType) || t.Implements(textUnmarshalerType) ||
		pt.Implements(jsonUnmarshalerType) || pt.Implements(textUnmarshalerType)
}

// planFlatJSON returns the flat decoder of struct type rt, or nil when rt
// is not one it can decode as encoding/json would.
func planFlatJSON(rt reflect.Type) *flatJSON {
	if rt.Kind() != reflect.Struct || unmarshals(rt) {
		return nil
	}
	p := &flatJSON{encodes: !marshals(rt)}
	for i := range rt.NumField() {
		sf := rt.Field(i)
		if sf.Anonymous {
			return nil // embedding: encoding/json's promotion rules
		}
		if !sf.IsExported() {
			continue // encoding/json ignores it too
		}
		name, omitEmpty := sf.Name, false
		if tag, ok := sf.Tag.Lookup("json"); ok {
			if tag == "-" {
				continue
			}
			tagName, opts, _ := strings.Cut(tag, ",")
			for o := range strings.SplitSeq(opts, ",") {
				switch o {
				case "string":
					return nil
				case "omitempty":
					omitEmpty = true
				case "omitzero":
					p.encodes = false
				}
			}
			if tagName != "" {
				name = tagName
			}
		}
		if !plainName(name) {
			return nil
		}
		switch k := sf.Type.Kind(); k {
		case reflect.String, reflect.Bool,
			reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
			reflect.Float32, reflect.Float64:
			if unmarshals(sf.Type) {
				return nil
			}
			if marshals(sf.Type) || k == reflect.Float32 || k == reflect.Float64 {
				p.encodes = false
			}
			for _, f := range p.fields {
				if strings.EqualFold(f.name, name) {
					return nil // encoding/json's rules for clashing names
				}
			}
			p.fields = append(p.fields, flatField{name: name, offset: sf.Offset, size: sf.Type.Size(), kind: k, omitEmpty: omitEmpty})
		default:
			return nil
		}
	}
	return p
}

// plainName reports whether a JSON field name has only ASCII letters,
// digits and "_-.", so that encoding/json takes it as it is and case
// folding it is ASCII case folding.
func plainName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// decode decodes data into the struct of p's type at v, and reports
// whether it did. When it did not, the struct may be partly written.
// The fields are written through their offsets (planFlatJSON took them
// from the type): no reflect.Value per field.
func (p *flatJSON) decode(data []byte, v unsafe.Pointer) bool {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return skipSpace(data, i+1) == len(data)
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return false
		}
		end, ok := plainString(data, i+1)
		if !ok {
			return false
		}
		f := p.field(data[i+1 : end])
		if f == nil {
			return false // unknown, or a case-folded match: encoding/json decides
		}
		i = skipSpace(data, end+1)
		if i >= len(data) || data[i] != ':' {
			return false
		}
		i = skipSpace(data, i+1)
		if i, ok = f.value(data, i, unsafe.Add(v, f.offset)); !ok {
			return false
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return skipSpace(data, i+1) == len(data)
		default:
			return false
		}
	}
}

func (p *flatJSON) field(key []byte) *flatField {
	for j := range p.fields {
		if string(key) == p.fields[j].name {
			return &p.fields[j]
		}
	}
	return nil
}

// value decodes the value at data[i:] into the field at fp, returning the
// index after it. The caller checks what follows it.
func (f *flatField) value(data []byte, i int, fp unsafe.Pointer) (int, bool) {
	if i >= len(data) {
		return i, false
	}
	if data[i] == 'n' {
		// null: encoding/json leaves strings, numbers and booleans as
		// they are.
		return i + 4, bytes.HasPrefix(data[i:], []byte("null"))
	}
	switch f.kind {
	case reflect.String:
		if data[i] != '"' {
			return i, false
		}
		end, ok := plainString(data, i+1)
		if !ok {
			return i, false
		}
		*(*string)(fp) = string(data[i+1 : end])
		return end + 1, true
	case reflect.Bool:
		switch {
		case bytes.HasPrefix(data[i:], []byte("true")):
			*(*bool)(fp) = true
			return i + 4, true
		case bytes.HasPrefix(data[i:], []byte("false")):
			*(*bool)(fp) = false
			return i + 5, true
		}
		return i, false
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, end, ok := plainInt(data, i)
		if bits := f.size * 8; !ok || bits < 64 && (n < -1<<(bits-1) || n > 1<<(bits-1)-1) {
			return i, false
		}
		switch f.size {
		case 1:
			*(*int8)(fp) = int8(n)
		case 2:
			*(*int16)(fp) = int16(n)
		case 4:
			*(*int32)(fp) = int32(n)
		default:
			*(*int64)(fp) = n
		}
		return end, true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, end, ok := plainInt(data, i)
		if bits := f.size * 8; !ok || n < 0 || (n == 0 && data[i] == '-') || bits < 64 && uint64(n) > 1<<bits-1 {
			return i, false
		}
		switch f.size {
		case 1:
			*(*uint8)(fp) = uint8(n)
		case 2:
			*(*uint16)(fp) = uint16(n)
		case 4:
			*(*uint32)(fp) = uint32(n)
		default:
			*(*uint64)(fp) = uint64(n)
		}
		return end, true
	case reflect.Float32, reflect.Float64:
		end, ok := jsonNumber(data, i)
		if !ok {
			return i, false
		}
		x, err := strconv.ParseFloat(string(data[i:end]), int(f.size*8))
		if err != nil {
			return i, false
		}
		if f.size == 4 {
			if math.Abs(x) > math.MaxFloat32 { // reflect.Value.OverflowFloat's test
				return i, false
			}
			*(*float32)(fp) = float32(x)
		} else {
			*(*float64)(fp) = x
		}
		return end, true
	}
	return i, false
}

// intAt and uintAt read the integer field of the given size at fp.
func intAt(fp unsafe.Pointer, size uintptr) int64 {
	switch size {
	case 1:
		return int64(*(*int8)(fp))
	case 2:
		return int64(*(*int16)(fp))
	case 4:
		return int64(*(*int32)(fp))
	}
	return *(*int64)(fp)
}

func uintAt(fp unsafe.Pointer, size uintptr) uint64 {
	switch size {
	case 1:
		return uint64(*(*uint8)(fp))
	case 2:
		return uint64(*(*uint16)(fp))
	case 4:
		return uint64(*(*uint32)(fp))
	}
	return *(*uint64)(fp)
}

// plainInt parses the integer at data[i:], -?(0|[1-9][0-9]*) of at most
// 18 digits (so that it cannot overflow an int64), returning the index
// after it. A fraction or an exponent after it is left to the caller,
// which rejects it as not a delimiter.
func plainInt(data []byte, i int) (n int64, end int, ok bool) {
	neg := false
	if i < len(data) && data[i] == '-' {
		neg = true
		i++
	}
	start := i
	for i < len(data) && '0' <= data[i] && data[i] <= '9' {
		n = n*10 + int64(data[i]-'0')
		i++
	}
	digits := i - start
	if digits == 0 || digits > 18 || (data[start] == '0' && digits > 1) {
		return 0, i, false
	}
	if neg {
		n = -n
	}
	return n, i, true
}

// jsonNumber returns the end of the JSON number at data[i:] (RFC 8259:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?).
func jsonNumber(data []byte, i int) (int, bool) {
	digits := func(i int) (int, bool) {
		start := i
		for i < len(data) && '0' <= data[i] && data[i] <= '9' {
			i++
		}
		return i, i > start
	}
	if i < len(data) && data[i] == '-' {
		i++
	}
	if i < len(data) && data[i] == '0' {
		i++
	} else {
		var ok bool
		if i, ok = digits(i); !ok {
			return i, false
		}
	}
	if i < len(data) && data[i] == '.' {
		var ok bool
		if i, ok = digits(i + 1); !ok {
			return i, false
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		var ok bool
		if i, ok = digits(i); !ok {
			return i, false
		}
	}
	return i, true
}

// plainString returns the index of the quote that ends the JSON string
// whose contents start at data[start]: a string without escapes or control
// characters, of valid UTF-8 (encoding/json would replace invalid bytes),
// whose bytes encoding/json takes as they are.
func plainString(data []byte, start int) (int, bool) {
	// A prefix of plain ASCII bytes without a quote changes neither the
	// end nor the verdict: the scans below start after it.
	start += plainInPrefix(data[start:])
	q := bytes.IndexByte(data[start:], '"')
	if q < 0 {
		return 0, false
	}
	s := data[start : start+q]
	if len(s) >= longPlain {
		if bytes.IndexByte(s, '\\') >= 0 {
			return 0, false
		}
		ctl, high := controlOrHigh(unsafe.String(unsafe.SliceData(s), len(s)))
		if ctl || high && !utf8.Valid(s) {
			return 0, false
		}
		return start + q, true
	}
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	var high uint64
	rest := s
	// Thirty-two bytes at a time while no byte needs a look: four words
	// tested at once, with one branch.
	for len(rest) >= 32 {
		w0 := binary.LittleEndian.Uint64(rest)
		w1 := binary.LittleEndian.Uint64(rest[8:])
		w2 := binary.LittleEndian.Uint64(rest[16:])
		w3 := binary.LittleEndian.Uint64(rest[24:])
		if (controlOrBackslash(w0)|controlOrBackslash(w1)|controlOrBackslash(w2)|controlOrBackslash(w3))&hi != 0 {
			break // the loop below looks at these words one by one
		}
		high |= (w0 | w1 | w2 | w3) & hi
		rest = rest[32:]
	}
	for len(rest) >= 8 {
		w := binary.LittleEndian.Uint64(rest)
		if controlOrBackslash(w)&hi != 0 && !plainBytes(rest[:8]) {
			return 0, false
		}
		high |= w & hi
		rest = rest[8:]
	}
	if !plainBytes(rest) {
		return 0, false
	}
	for _, c := range rest {
		high |= uint64(c & 0x80)
	}
	if high != 0 && !utf8.Valid(s) {
		return 0, false
	}
	return start + q, true
}

// controlOrBackslash has the high bit of a byte set where w may have a
// byte below 0x20 (a control character) or a backslash; none set means w
// has neither. (A byte of 0x80 and up may set it too.)
func controlOrBackslash(w uint64) uint64 {
	const lo = 0x0101010101010101
	bs := w ^ (lo * '\\')
	return (w-lo*0x20)&^w | (bs-lo)&^bs
}

// plainBytes reports whether s has no control character and no backslash.
func plainBytes(s []byte) bool {
	for _, c := range s {
		if c < 0x20 || c == '\\' {
			return false
		}
	}
	return true
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && isJSONSpace(data[i]) {
		i++
	}
	return i
}

// encode appends the JSON encoding of the struct of p's type at v to b,
// as json.Marshal writes it, and reports whether it did (p.encodes must
// be set). The fields are read through their offsets.
func (p *flatJSON) encode(b []byte, v unsafe.Pointer) ([]byte, bool) {
	b = append(b, '{')
	first := true
	for i := range p.fields {
		f := &p.fields[i]
		fp := unsafe.Add(v, f.offset)
		if f.omitEmpty && f.isZero(fp) {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, f.name...)
		b = append(b, '"', ':')
		switch f.kind {
		case reflect.String:
			s := *(*string)(fp)
			if !plainOut(s) {
				return b, false
			}
			b = append(b, '"')
			b = append(b, s...)
			b = append(b, '"')
		case reflect.Bool:
			b = strconv.AppendBool(b, *(*bool)(fp))
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			b = strconv.AppendInt(b, intAt(fp, f.size), 10)
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			b = strconv.AppendUint(b, uintAt(fp, f.size), 10)
		default:
			return b, false
		}
	}
	return append(b, '}'), true
}

// isZero reports whether the field at fp, of a kind encode writes, is its
// kind's zero (omitempty's test for them).
func (f *flatField) isZero(fp unsafe.Pointer) bool {
	switch f.kind {
	case reflect.String:
		return *(*string)(fp) == ""
	case reflect.Bool:
		return !*(*bool)(fp)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return intAt(fp, f.size) == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return uintAt(fp, f.size) == 0
	}
	return false
}

// plainOut reports whether encoding/json writes s as it is between quotes
// (with its HTML escaping, as json.Marshal does): no control character, no
// '"', '\\', '<', '>' or '&', valid UTF-8 without U+2028 and U+2029.
func plainOut(s string) bool {
	// A prefix of ASCII bytes written as they are changes nothing: neither
	// the bytes to escape nor UTF-8 validity (no character spans its end).
	s = s[plainOutPrefix(s):]
	if len(s) >= longPlain {
		return plainOutLong(s)
	}
	high := false
	k := 0
	// Thirty-two bytes at a time while no byte needs a look (one branch
	// for four words), then a word at a time.
	for ; k+32 <= len(s); k += 32 {
		if (outLook(word(s[k:k+8]))|outLook(word(s[k+8:k+16]))|outLook(word(s[k+16:k+24]))|outLook(word(s[k+24:k+32])))&hiBits != 0 {
			break
		}
	}
	for ; k+8 <= len(s); k += 8 {
		if outLook(word(s[k:k+8]))&hiBits == 0 {
			continue
		}
		for j := k; j < k+8; j++ {
			if !plainOutByte(s[j]) {
				return false
			}
			high = high || s[j] >= utf8.RuneSelf
		}
	}
	for j := k; j < len(s); j++ {
		if !plainOutByte(s[j]) {
			return false
		}
		high = high || s[j] >= utf8.RuneSelf
	}
	return !high || validOut(s)
}

// longPlain is the length from which plainOut and plainString look for
// the bytes to escape one at a time with strings.IndexByte (vector code),
// each a pass over the string, and for control characters in a separate
// scan of the words; below it, one scan of the words tests everything.
// (With AVX2, plainOutPrefix and plainInPrefix first skip the plain ASCII
// bytes in one vector pass: these scans then see only the tail or what
// follows the first byte that needs a look.)
const longPlain = 128

// plainOutLong is plainOut for a long string: five IndexByte passes, and
// one scan of the words for control characters and bytes of 0x80 and up.
func plainOutLong(s string) bool {
	for _, c := range []byte{'"', '\\', '<', '>', '&'} {
		if strings.IndexByte(s, c) >= 0 {
			return false
		}
	}
	ctl, high := controlOrHigh(s)
	if ctl {
		return false
	}
	return !high || validOut(s)
}

// validOut reports whether json.Marshal writes s's multi-byte characters
// as they are: valid UTF-8, without U+2028 and U+2029 (which it escapes).
func validOut(s string) bool {
	return utf8.ValidString(s) && !strings.Contains(s, "\u2028") && !strings.Contains(s, "\u2029")
}

// controlOrHigh reports whether s has a control character (below 0x20),
// and whether it has a byte of 0x80 and up (UTF-8 to check).
func controlOrHigh(s string) (ctl, high bool) {
	// (w - 0x20) &^ w sets a byte's high bit where a byte is below 0x20,
	// and only there while no byte is (a borrow starts only at such a
	// byte): or'd over all words, its high bits say whether any byte is.
	// Plain strings are the ones worth speed, so there is no early exit.
	var c, hb uint64
	k := 0
	for ; k+64 <= len(s); k += 64 {
		t := s[k : k+64] // one bounds check for the eight words
		w0, w1, w2, w3 := word(t[0:8]), word(t[8:16]), word(t[16:24]), word(t[24:32])
		w4, w5, w6, w7 := word(t[32:40]), word(t[40:48]), word(t[48:56]), word(t[56:64])
		c |= (w0-loBits*0x20)&^w0 | (w1-loBits*0x20)&^w1 | (w2-loBits*0x20)&^w2 | (w3-loBits*0x20)&^w3 |
			(w4-loBits*0x20)&^w4 | (w5-loBits*0x20)&^w5 | (w6-loBits*0x20)&^w6 | (w7-loBits*0x20)&^w7
		hb |= w0 | w1 | w2 | w3 | w4 | w5 | w6 | w7
	}
	for ; k+8 <= len(s); k += 8 {
		w := word(s[k : k+8])
		c |= (w - loBits*0x20) &^ w
		hb |= w
	}
	for ; k < len(s); k++ {
		if s[k] < 0x20 {
			return true, false
		}
		hb |= uint64(s[k])
	}
	return c&hiBits != 0, hb&hiBits != 0
}

const loBits, hiBits = 0x0101010101010101, 0x8080808080808080

// word is b's eight bytes, little-endian (one load: b's length is known).
func word(b string) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// outLook has the high bit of a byte set where w may have a byte that
// encoding/json does not write as it is, or one of 0x80 and up (UTF-8 to
// check); none set means w's bytes are written as they are. zero(x) sets a
// byte's high bit where x may have a zero byte (exact as a test for any).
// Bytes that differ in one bit share a test: '"' (0x22) and '&' (0x26),
// '<' (0x3c) and '>' (0x3e).
func outLook(w uint64) uint64 {
	zero := func(x uint64) uint64 { return (x - loBits) &^ x }
	control := (w - loBits*0x20) &^ w
	quoteAmp := zero((w ^ loBits*'"') &^ (loBits * ('"' ^ '&')))
	angle := zero((w ^ loBits*'<') &^ (loBits * ('<' ^ '>')))
	backslash := zero(w ^ loBits*'\\')
	return control | quoteAmp | angle | backslash | w
}

func plainOutByte(c byte) bool {
	return c >= utf8.RuneSelf || c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
}
