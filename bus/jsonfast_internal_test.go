package bus

import (
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/busway/busway/transport"
)

type flatOrder struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
	Note   string `json:"note"`
}

type flatLabel string

type flatKinds struct {
	S       string  `json:"s,omitempty"`
	B       bool    `json:"b"`
	I8      int8    `json:"i8"`
	I64     int64   `json:"i64"`
	U16     uint16  `json:"u16"`
	U       uint    `json:"u"`
	F32     float32 `json:"f32"`
	F64     float64 `json:"f64"`
	Label   flatLabel
	Skipped string `json:"-"`
	hidden  string // encoding/json ignores it; so must flatJSON
}

var _ = flatKinds{}.hidden

// decodeBoth decodes data into a zero T with json.Unmarshal and with the
// flat decoder (falling back to json.Unmarshal as decode does), and fails
// unless both give the same value and error, and a flat decode that
// succeeded is one json.Unmarshal accepts.
func decodeBoth[T any](t *testing.T, data []byte) (flatOK bool) {
	t.Helper()
	p := planFlatJSON(reflect.TypeFor[T]())
	if p == nil {
		t.Fatalf("no flat plan for %v", reflect.TypeFor[T]())
	}
	var want T
	wantErr := json.Unmarshal(data, &want)
	var got T
	flatOK = p.decode(data, unsafe.Pointer(&got))
	if flatOK {
		if wantErr != nil {
			t.Fatalf("flat decoded %q, which json.Unmarshal rejects: %v", data, wantErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("flat decoded %q to %+v, json.Unmarshal to %+v", data, got, want)
		}
	}
	// Through decode, as a handler does.
	body := data
	if len(body) == 0 {
		return flatOK
	}
	m := newTestMessage(body)
	target := new(T)
	targets := &sync.Pool{New: func() any { return target }} // every T it gives is target
	ev, err := decode[T](JSON, m, targets, p)
	wantErr = JSON.Unmarshal(body, new(T)) // the codec's (pooled) error for the same body
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("decode %q: error %v, json.Unmarshal's %v", data, err, wantErr)
	}
	if err == nil && !reflect.DeepEqual(ev.Data, want) {
		t.Fatalf("decode %q gave %+v, json.Unmarshal %+v", data, ev.Data, want)
	}
	if !reflect.DeepEqual(*target, *new(T)) {
		t.Fatalf("decode %q left %+v in the target", data, *target)
	}
	return flatOK
}

var flatSeeds = []string{
	`{"id":"order-1","amount":1250,"note":"hello"}`,
	` { "id" : "x" , "amount" : -0 , "note" : "" } ` + "\n",
	`{}`, ` {} `, `{"id":null,"amount":null}`, `{"id":"a","id":"b"}`, `{"id":"a","id":null}`,
	`{"ID":"case"}`, `{"Id":"case"}`, `{"unknown":1}`, `{"id":"esc\"aped"}`, `{"id":"tab\there"}`,
	"{\"id\":\"ctl\x01\"}", "{\"id\":\"bad\xffutf8\"}", `{"id":"ünïcødé ✓"}`, "{\"id\":\"\xed\xa0\x80\"}",
	`{"amount":1.5}`, `{"amount":1e3}`, `{"amount":01}`, `{"amount":-}`, `{"amount":9223372036854775807}`,
	`{"amount":123456789012345678}`, `{"amount":"7"}`, `{"amount":true}`, `{"id":7}`, `{"id":"a",}`,
	`{"id":"a"`, `{"id":"a"}x`, `{"id":"a"}{}`, `{"id" "a"}`, `{,}`, `null`, `[]`, `"s"`, `{"id":"a"]`,
	`{"amount":nul}`, `{"amount":nullx}`, `{"amount":truex}`, "\ufeff{}", `{"id":"` + strings.Repeat("abcdefgh", 40) + `"}`,
	`{"note":"` + strings.Repeat("01234567", 3) + `\u0041"}`, `{"note":"` + strings.Repeat("0123456\x7f", 3) + `"}`,
	`{"s":"x","b":true,"i8":-128,"i64":-42,"u16":65535,"u":0,"f32":1.5e-3,"f64":-0.0,"Label":"l"}`,
	`{"i8":128}`, `{"u16":65536}`, `{"u":-1}`, `{"u":-0}`, `{"f32":1e39}`, `{"f64":1e400}`, `{"f64":.5}`,
	`{"f64":1.}`, `{"f64":1e}`, `{"f64":-01.5}`, `{"b":false,"b":null}`, `{"Skipped":"x"}`, `{"hidden":"x"}`,
	`{"label":"folded"}`, `{"s":"a","S":"b"}`,
}

func TestFlatJSONMatchesEncodingJSON(t *testing.T) {
	flat := 0
	for _, s := range flatSeeds {
		if decodeBoth[flatOrder](t, []byte(s)) {
			flat++
		}
		decodeBoth[flatKinds](t, []byte(s))
	}
	if flat < 5 {
		t.Fatalf("the flat decoder decoded %d of the seeds: it is not used", flat)
	}
	if !decodeBoth[flatOrder](t, []byte(`{"id":"order-1","amount":1250,"note":"`+strings.Repeat("x", 4096)+`"}`)) {
		t.Fatal("the benchmark's event was not decoded flat")
	}
}

func FuzzFlatJSON(f *testing.F) {
	for _, s := range flatSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeBoth[flatOrder](t, data)
		decodeBoth[flatKinds](t, data)
	})
}

type flatText struct{ v string }

func (x *flatText) UnmarshalText(b []byte) error { x.v = string(b); return nil }

type flatSelf struct{ A string }

func (x *flatSelf) UnmarshalJSON([]byte) error { return nil }

// Types the flat decoder leaves to encoding/json.
func TestFlatJSONDeclines(t *testing.T) {
	type embedded struct{ flatOrder }
	type quoted struct {
		N int `json:"n,string"`
	}
	type timed struct{ At time.Time }
	type pointer struct{ P *string }
	type text struct{ T flatText }
	type ip struct{ IP net.IP }
	type clash struct {
		A string `json:"name"`
		B string `json:"NAME"`
	}
	type oddName struct {
		A string `json:"ä"`
	}
	type odd2 struct {
		A string `json:"a b"`
	}
	for _, rt := range []reflect.Type{
		reflect.TypeFor[embedded](), reflect.TypeFor[quoted](), reflect.TypeFor[timed](), reflect.TypeFor[pointer](),
		reflect.TypeFor[text](), reflect.TypeFor[ip](), reflect.TypeFor[clash](), reflect.TypeFor[oddName](),
		reflect.TypeFor[odd2](), reflect.TypeFor[flatSelf](), reflect.TypeFor[*flatOrder](), reflect.TypeFor[map[string]string](),
		reflect.TypeFor[string](),
	} {
		if p := planFlatJSON(rt); p != nil {
			t.Errorf("planFlatJSON(%v) = %+v, want nil", rt, p)
		}
	}
}

func newTestMessage(body []byte) *transport.Message {
	return &transport.Message{ID: "id-1", Topic: "orders", Group: "g", Attempt: 1, Body: body,
		Header: map[string]string{transport.HeaderID: "id-1", transport.HeaderType: "flatOrder", transport.HeaderSource: "test",
			transport.HeaderSpecVersion: SpecVersion, transport.HeaderContentType: "application/json"}}
}

type flatOut struct {
	S     string `json:"s,omitempty"`
	T     string `json:"t"`
	B     bool   `json:"b,omitempty"`
	I8    int8   `json:"i8"`
	I     int    `json:"i,omitempty"`
	U16   uint16 `json:"u16"`
	Label flatLabel
	Skip  string `json:"-"`
}

// encodeBoth fails unless the flat encoder, where it does not give up,
// writes what json.Marshal writes.
func encodeBoth[T any](t *testing.T, v T) (flatOK bool) {
	t.Helper()
	p := planFlatJSON(reflect.TypeFor[T]())
	if p == nil || !p.encodes {
		t.Fatalf("no flat encoder for %v", reflect.TypeFor[T]())
	}
	want, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := p.encode([]byte("junk"), unsafe.Pointer(&v))
	if ok && string(got) != "junk"+string(want) {
		t.Fatalf("flat encoded %+v as %s, json.Marshal as %s", v, got[4:], want)
	}
	box := pubBoxes.Get().(*pubBox)
	body, err := box.Marshal(v) // encoding/json's path, when the flat encoder gives up
	if err != nil || string(body) != string(want) {
		t.Fatalf("pubBox.Marshal(%+v) = %s, %v; json.Marshal gives %s", v, body, err, want)
	}
	box.recycle()
	return ok
}

var flatStrings = []string{"", "plain", "with space and 0123456789 ~!@#$%^*()_+=-`';:,./?|{}[]", "quote\"", "back\\slash",
	"<tag>", "a&b", "tab\t", "nl\n", "\x00", "\x1f", "\x7f", "ünïcødé ✓", "bad\xffutf8", "\xe2\x80\xa8", "\xe2\x80\xa9", "\ufffd",
	strings.Repeat("abcdefgh", 33), strings.Repeat("abcdefg<", 3), strings.Repeat("ab\u00e9", 9)}

func TestFlatJSONEncodesAsEncodingJSON(t *testing.T) {
	flat := 0
	for _, s := range flatStrings {
		if encodeBoth(t, flatOrder{ID: s, Amount: -7, Note: s + s}) {
			flat++
		}
		encodeBoth(t, flatOut{S: s, T: s, Label: flatLabel(s), Skip: "x"})
	}
	encodeBoth(t, flatOut{})
	encodeBoth(t, flatOut{B: true, I8: -128, I: 1 << 40, U16: 65535})
	encodeBoth(t, struct{}{})
	if flat < 5 {
		t.Fatalf("the flat encoder encoded %d of the values: it is not used", flat)
	}
	for _, rt := range []reflect.Type{reflect.TypeFor[flatKinds](), reflect.TypeFor[struct {
		A int `json:"a,omitzero"`
	}](), reflect.TypeFor[struct{ T flatMarshals }]()} {
		if p := planFlatJSON(rt); p != nil && p.encodes {
			t.Errorf("planFlatJSON(%v) encodes, want it to leave %v to encoding/json", rt, rt)
		}
	}
}

type flatMarshals string

func (flatMarshals) MarshalText() ([]byte, error) { return []byte("m"), nil }

func FuzzFlatJSONEncode(f *testing.F) {
	for _, s := range flatStrings {
		f.Add(s, int64(len(s)), true)
	}
	f.Fuzz(func(t *testing.T, s string, n int64, b bool) {
		encodeBoth(t, flatOrder{ID: s, Amount: int(n), Note: s})
		encodeBoth(t, flatOut{S: s, T: s[len(s)/2:], B: b, I8: int8(n), I: int(n), U16: uint16(n), Label: flatLabel(s)})
	})
}

// TestPlainOutMatchesEncodingJSON: plainOut says a string is plain exactly
// when json.Marshal writes it unchanged between quotes, for every byte value
// at every position of strings that span the eight-byte words and the tail,
// and for multi-byte characters across a word's boundary.
func TestPlainOutMatchesEncodingJSON(t *testing.T) {
	check := func(s string) {
		t.Helper()
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		want := string(out) == `"`+s+`"`
		if got := plainOut(s); got != want {
			t.Fatalf("plainOut(%q) = %v, json.Marshal writes %s", s, got, out)
		}
	}
	for _, n := range plainLengths {
		for _, pos := range plainPositions(n) {
			for c := range 256 {
				b := []byte(strings.Repeat("a", n))
				b[pos] = byte(c)
				check(string(b))
			}
		}
	}
	for _, r := range []string{"é", "€", "😀", "\u2028", "\u2029", "\ufffd", "\xed\xa0\x80"} {
		for _, n := range []int{12, longPlain + 12} {
			for pos := range n {
				check(strings.Repeat("a", pos) + r + strings.Repeat("b", n-pos))
			}
		}
	}
}

// plainLengths are the string lengths the plain-string tests try: the
// word and 32-byte steps of the short scans and their tails, and around
// longPlain, from which the scans go by IndexByte.
var plainLengths = []int{1, 7, 8, 9, 16, 17, 23, 31, 32, 33, 63, 64, 65, longPlain - 1, longPlain, longPlain + 1, longPlain + 37, 300}

// plainPositions are the positions of a string of length n that the
// tests set each byte value at: all of them up to longPlain + 1, else
// the first and last 40 and every seventh between.
func plainPositions(n int) []int {
	var ps []int
	for p := range n {
		if n <= longPlain+1 || p < 40 || p >= n-40 || p%7 == 0 {
			ps = append(ps, p)
		}
	}
	return ps
}

func BenchmarkPlainOut(b *testing.B) {
	s := strings.Repeat("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", 64) // 4 KiB
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		if !plainOut(s) {
			b.Fatal("not plain")
		}
	}
}

// TestPlainStringMatchesByteLoop: plainString finds the closing quote and
// accepts the string exactly when a byte-by-byte reading would (no control
// character, no backslash, valid UTF-8), for every byte value at every
// position of strings that span the eight-byte words and the tail.
func TestPlainStringMatchesByteLoop(t *testing.T) {
	ref := func(data []byte, start int) (int, bool) {
		for j := start; j < len(data); j++ {
			switch c := data[j]; {
			case c == '"':
				return j, utf8.Valid(data[start:j])
			case c < 0x20 || c == '\\':
				return 0, false
			}
		}
		return 0, false
	}
	for _, n := range plainLengths {
		for _, pos := range plainPositions(n) {
			for c := range 256 {
				data := []byte(`"` + strings.Repeat("a", n) + `"x`)
				data[1+pos] = byte(c)
				wantEnd, wantOK := ref(data, 1)
				end, ok := plainString(data, 1)
				if ok != wantOK || ok && end != wantEnd {
					t.Fatalf("plainString(%q) = %d, %v; want %d, %v", data, end, ok, wantEnd, wantOK)
				}
			}
		}
	}
}

func BenchmarkPlainString(b *testing.B) {
	data := []byte(`"` + strings.Repeat("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", 64) + `"`)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, ok := plainString(data, 1); !ok {
			b.Fatal("not plain")
		}
	}
}

// flatInts has an integer field of every size, signed and unsigned: the
// flat decoder and encoder read and write them through their offsets, by
// size.
type flatInts struct {
	I8  int8   `json:"i8"`
	I16 int16  `json:"i16,omitempty"`
	I32 int32  `json:"i32"`
	I64 int64  `json:"i64,omitempty"`
	I   int    `json:"i"`
	U8  uint8  `json:"u8,omitempty"`
	U16 uint16 `json:"u16"`
	U32 uint32 `json:"u32,omitempty"`
	U64 uint64 `json:"u64"`
	U   uint   `json:"u,omitempty"`
	B   bool   `json:"b,omitempty"`
	Z   bool   `json:"z"`
}

func TestFlatJSONIntegerSizes(t *testing.T) {
	bounds := []int64{0, 1, -1, 127, 128, -128, -129, 255, 256, 32767, 32768, -32768, -32769, 65535, 65536,
		1<<31 - 1, 1 << 31, -1 << 31, -1<<31 - 1, 1<<32 - 1, 1 << 32, 123456789012345678, -123456789012345678}
	names := []string{"i8", "i16", "i32", "i64", "i", "u8", "u16", "u32", "u64", "u"}
	flat := 0
	for _, n := range bounds {
		for _, name := range names {
			if decodeBoth[flatInts](t, []byte(fmt.Sprintf(`{%q:%d,"b":true,"z":false}`, name, n))) {
				flat++
			}
		}
		encodeBoth(t, flatInts{I8: int8(n), I16: int16(n), I32: int32(n), I64: n, I: int(n),
			U8: uint8(n), U16: uint16(n), U32: uint32(n), U64: uint64(n), U: uint(n), B: n%2 == 0})
	}
	if flat < len(bounds)*len(names)/2 {
		t.Fatalf("the flat decoder decoded %d of %d bodies: it is not used", flat, len(bounds)*len(names))
	}
}
