package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"unsafe"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

// The consume path's Fetch: requests written here, each response read whole
// into one buffer and its record batches (format v2) decoded in place. A
// record's value is a sub-slice of that buffer (of its batch's decompressed
// bytes when compressed), so a record costs no allocation or copy of its
// value: kafka-go's Batch allocates each key, value and header, reads them
// through a 4 KiB bufio.Reader and decompresses through a stack of readers.

// fetchVersion is the Fetch version sent: every broker since 0.11 accepts
// it (the first with record batches v2) and Kafka 4 still does (it removed
// v0-v3). It is not flexible (no tagged fields), and v5 and later add
// nothing the consume path uses.
const fetchVersion = 4

const apiKeyFetch = 1

// appendFetchRequest appends a Fetch v4 request, its size prefix included,
// for one partition from offset: read uncommitted (kafka-go's default, which
// the consume path always used), the broker holding it up to maxWait for at
// least one byte.
func appendFetchRequest(b []byte, correlationID int32, clientID, topic string, partition int32, offset int64, maxWaitMs, maxBytes int32) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint32(b, 0) // size, set below
	b = binary.BigEndian.AppendUint16(b, apiKeyFetch)
	b = binary.BigEndian.AppendUint16(b, fetchVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(correlationID))
	b = appendString(b, clientID)
	b = binary.BigEndian.AppendUint32(b, 0xffffffff) // replica_id -1: a consumer
	b = binary.BigEndian.AppendUint32(b, uint32(maxWaitMs))
	b = binary.BigEndian.AppendUint32(b, 1) // min_bytes
	b = binary.BigEndian.AppendUint32(b, uint32(maxBytes))
	b = append(b, 0)                        // isolation_level: read uncommitted
	b = binary.BigEndian.AppendUint32(b, 1) // one topic
	b = appendString(b, topic)
	b = binary.BigEndian.AppendUint32(b, 1) // one partition
	b = binary.BigEndian.AppendUint32(b, uint32(partition))
	b = binary.BigEndian.AppendUint64(b, uint64(offset))
	b = binary.BigEndian.AppendUint32(b, uint32(maxBytes))
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// errMalformed wraps what is wrong with a fetch response or record batch.
var errMalformed = errors.New("malformed")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, a...))
}

// batchErr is err, of the record batch at offset base.
func batchErr(base int64, err error) error {
	return fmt.Errorf("kafka: fetch response: record batch at offset %d: %w", base, err)
}

// parseFetchResponse returns the record bytes of topic's partition in a
// Fetch v4 response body (after its size prefix), or the partition's error:
// a kafkago.Error for a partition error code, so that the fetch loop tells
// them apart as it did kafka-go's.
func parseFetchResponse(b []byte, correlationID int32, topic string, partition int32) ([]byte, error) {
	recs, err := parsePartition(b, correlationID, topic, partition)
	if err != nil && !errors.As(err, new(kafkago.Error)) {
		err = fmt.Errorf("kafka: fetch response: %w", err)
	}
	return recs, err
}

func parsePartition(b []byte, correlationID int32, topic string, partition int32) ([]byte, error) {
	r := wireReader{b: b}
	if id := r.int32(); r.err == nil && id != correlationID {
		return nil, malformed("correlation id %d, want %d", id, correlationID)
	}
	r.int32() // throttle_time_ms: v4's broker delays the response itself
	for range r.count(2 + 4) {
		name := r.string()
		for range r.count(4 + 2 + 8 + 8 + 4 + 4) {
			id := r.int32()
			code := r.int16()
			r.skip(8 + 8) // high watermark, last stable offset
			if n := r.int32(); n > 0 {
				r.skip(16 * int(n)) // aborted transactions: read uncommitted delivers them
			}
			recs := r.bytes()
			if r.err != nil {
				return nil, r.err
			}
			if name != topic || id != partition {
				continue
			}
			if code != 0 {
				return nil, kafkago.Error(code)
			}
			return recs, nil
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return nil, malformed("no partition %s/%d in the response", topic, partition)
}

// wireReader reads Kafka's big-endian fields from b; the first field past
// its end sets err, and every later read returns zero.
type wireReader struct {
	b   []byte
	off int
	err error
}

func (r *wireReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = malformed("field of %d bytes at byte %d of %d", n, r.off, len(r.b))
		return nil
	}
	p := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return p
}

func (r *wireReader) skip(n int) { r.take(n) }

func (r *wireReader) int16() int16 {
	if p := r.take(2); p != nil {
		return int16(binary.BigEndian.Uint16(p))
	}
	return 0
}

func (r *wireReader) int32() int32 {
	if p := r.take(4); p != nil {
		return int32(binary.BigEndian.Uint32(p))
	}
	return 0
}

// count reads an array's length, at most what the rest of b can hold at
// min bytes an element (a bogus count never makes a loop long).
func (r *wireReader) count(min int) int {
	n := int(r.int32())
	if n < 0 || r.err != nil {
		return 0
	}
	if n > (len(r.b)-r.off)/min {
		r.err = malformed("array of %d elements at byte %d of %d", n, r.off, len(r.b))
		return 0
	}
	return n
}

func (r *wireReader) string() string {
	n := int(r.int16())
	return string(r.take(n))
}

func (r *wireReader) bytes() []byte {
	n := int(r.int32())
	if n == -1 {
		return nil
	}
	return r.take(n)
}

// Record batch v2 layout (offsets into the batch).
const (
	batchLengthOffset = 8  // int32: the bytes after it
	batchMagicOffset  = 16 // int8
	batchCRCOffset    = 17 // uint32: crc32c of the bytes after it
	batchAttrsOffset  = 21 // int16
	batchHeaderLen    = 61 // up to the first record

	attrCompression   = 0x07
	attrLogAppendTime = 0x08
	attrControl       = 0x20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is a decoded record header.
type header struct{ key, value string }

// decoder decodes the record batches of fetch responses into jobs.
type decoder struct {
	buf  *respBuf // the response's buffer, the jobs'
	jobs []job
	hdrs []header
	// strs holds the bytes of the keys and headers' strings: they point into
	// it (unsafe.String), not into the response, so that a key a handler
	// keeps does not keep the response's values in memory. It is only ever
	// appended to: a string's bytes never change.
	strs []byte
	// inflated is the decompressed bytes of the batch being decoded.
	inflated bytes.Buffer
}

// decode appends to d.jobs the records in recs (a partition's record
// batches, as a fetch response holds them) from offset from on, and returns
// the offset the next fetch starts at: past the last complete batch (past
// its last offset, which covers the records compaction removed and a
// control batch's marker), or from when none is complete. A batch cut off at
// recs' end (the broker stops at its byte limit) is left to the next fetch.
// Control batches (transaction markers) are skipped. When a batch is
// malformed (or fails its CRC, or its compression is unknown) decode stops
// there: the records before it are in d.jobs and the returned offset is
// that batch's, with the error.
//
// The jobs' values are sub-slices of recs, or of a buffer of their batch's
// decompressed bytes; nothing writes them afterwards.
func (d *decoder) decode(recs []byte, from int64) (int64, error) {
	next := from
	if n := countRecords(recs, from); cap(d.jobs)-len(d.jobs) < n {
		d.jobs = slices.Grow(d.jobs, n)
	}
	for len(recs) >= batchMagicOffset+1 {
		base := int64(binary.BigEndian.Uint64(recs))
		n := int64(int32(binary.BigEndian.Uint32(recs[batchLengthOffset:])))
		if n < 0 {
			return next, batchErr(base, malformed("length %d", n))
		}
		total := 12 + n
		if total > int64(len(recs)) {
			break // cut off: the next fetch starts there
		}
		batch := recs[:total]
		recs = recs[total:]
		if len(batch) <= batchMagicOffset {
			return next, batchErr(base, malformed("length %d", n))
		}
		if magic := batch[batchMagicOffset]; magic != 2 {
			return next, batchErr(base, fmt.Errorf("format v%d (magic byte %d): only format v2 (Kafka 0.11 and later) can be read: %w",
				magic, magic, errors.ErrUnsupported))
		}
		if len(batch) < batchHeaderLen {
			return next, batchErr(base, malformed("%d bytes, fewer than its header", len(batch)))
		}
		if sum, want := crc32.Checksum(batch[batchAttrsOffset:], castagnoli), binary.BigEndian.Uint32(batch[batchCRCOffset:]); sum != want {
			return next, batchErr(base, malformed("CRC %08x, computed %08x", want, sum))
		}
		attrs := binary.BigEndian.Uint16(batch[batchAttrsOffset:])
		last := base + int64(int32(binary.BigEndian.Uint32(batch[23:])))
		if last < base {
			return next, batchErr(base, malformed("last offset %d", last))
		}
		if last < from || attrs&attrControl != 0 {
			next = max(next, last+1)
			continue
		}
		baseTime := int64(binary.BigEndian.Uint64(batch[27:]))
		if attrs&attrLogAppendTime != 0 {
			baseTime = int64(binary.BigEndian.Uint64(batch[35:])) // the broker's time, for every record
		}
		count := int32(binary.BigEndian.Uint32(batch[57:]))
		body := batch[batchHeaderLen:]
		if c := attrs & attrCompression; c != 0 {
			var err error
			if body, err = d.inflate(compress.Compression(c), body); err != nil {
				return next, batchErr(base, err)
			}
		}
		mark := len(d.jobs)
		if err := d.records(body, count, base, last, from, baseTime, attrs&attrLogAppendTime != 0); err != nil {
			clear(d.jobs[mark:])
			d.jobs = d.jobs[:mark] // fetched again with the batch
			return next, batchErr(base, err)
		}
		next = max(next, last+1)
	}
	return next, nil
}

// countRecords is how many records recs' complete batches from offset from
// on say they hold, for sizing the jobs: at most one per 7 bytes (the
// smallest record), so that a bogus count costs no more than the bytes (a
// compressed batch of more grows the jobs).
func countRecords(recs []byte, from int64) int {
	n := 0
	for len(recs) >= batchHeaderLen {
		l := int64(int32(binary.BigEndian.Uint32(recs[batchLengthOffset:])))
		if l < 0 || 12+l > int64(len(recs)) {
			break
		}
		base := int64(binary.BigEndian.Uint64(recs))
		last := base + int64(int32(binary.BigEndian.Uint32(recs[23:])))
		if l+12 >= batchHeaderLen && recs[batchMagicOffset] == 2 && last >= from && binary.BigEndian.Uint16(recs[batchAttrsOffset:])&attrControl == 0 {
			n += min(max(int(int32(binary.BigEndian.Uint32(recs[57:]))), 0), int(l+12-batchHeaderLen)/7)
		}
		recs = recs[12+l:]
	}
	return n
}

// inflate decompresses a batch's records into d.inflated's bytes, which
// then belong to the batch's jobs: the next batch gets a new buffer.
func (d *decoder) inflate(c compress.Compression, b []byte) ([]byte, error) {
	codec := c.Codec()
	if codec == nil {
		return nil, malformed("unknown compression codec %d", c)
	}
	d.inflated = bytes.Buffer{}
	d.inflated.Grow(4 * len(b)) // as kafka-go: a ratio near 75%, more grows it
	r := codec.NewReader(bytes.NewReader(b))
	bound := maxInflated(len(b))
	n, err := d.inflated.ReadFrom(io.LimitReader(r, bound+1))
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("decompressing (%s): %w", codec.Name(), err)
	}
	if n > bound {
		d.inflated = bytes.Buffer{} // not kept for the next batch
		return nil, malformed("decompressing (%s): %d compressed bytes decompress to more than %d, the most a batch may (64 MiB, or 64 times its compressed size when that is more)",
			codec.Name(), len(b), bound)
	}
	return d.inflated.Bytes(), nil
}

// maxInflated bounds what a compressed batch of n bytes may decompress to:
// without a bound a small batch made to inflate without end (a
// decompression bomb) would take all memory. Producers bound a batch
// before compressing it (kgo and the Java client at 1 MiB by default,
// brokers at message.max.bytes, 1 MiB, after), and their codecs rarely pass
// 10:1 on records, so a batch past 64 MiB, or 64 times its compressed
// size, is not one a producer made; its fetch fails, as a corrupt batch's
// does, and is tried again, never skipped.
func maxInflated(n int) int64 { return max(64<<20, 64*int64(n)) }

// records decodes count records of a batch from b.
func (d *decoder) records(b []byte, count int32, base, last, from, baseTime int64, appendTime bool) error {
	if count < 0 {
		return malformed("%d records", count)
	}
	i := 0
	for k := int32(0); k < count; k++ {
		n, ok := varint(b, &i)
		if !ok || n < 0 || n > int64(len(b)-i) {
			return malformed("record %d of %d: length %d past the batch's end", k, count, n)
		}
		rec := b[i : i+int(n) : i+int(n)]
		i += int(n)
		if err := d.record(rec, base, last, from, baseTime, appendTime); err != nil {
			return fmt.Errorf("record %d of %d: %w", k, count, err)
		}
	}
	return nil
}

// record decodes one record (after its length) of the batch of offsets base
// to last into a job, unless it is before offset from.
func (d *decoder) record(b []byte, base, last, from, baseTime int64, appendTime bool) error {
	i := 1 // attributes: unused
	tsDelta, ok1 := varint(b, &i)
	offDelta, ok2 := varint(b, &i)
	if !ok1 || !ok2 || i > len(b) {
		return malformed("record header cut off")
	}
	off := base + offDelta
	if offDelta < 0 || off > last {
		return malformed("offset %d outside its batch's %d-%d", off, base, last)
	}
	if off < from {
		return nil // in a batch the fetch began inside of
	}
	key, ok := lenBytes(b, &i)
	if !ok {
		return malformed("key cut off")
	}
	value, ok := lenBytes(b, &i)
	if !ok {
		return malformed("value cut off")
	}
	nh, ok := varint(b, &i)
	if !ok || nh < 0 || nh > int64(len(b)-i)/2 {
		return malformed("%d headers", nh)
	}
	var hdrs []header
	if nh > 0 {
		start := len(d.hdrs)
		for range nh {
			k, ok1 := lenBytes(b, &i)
			v, ok2 := lenBytes(b, &i)
			if !ok1 || !ok2 {
				return malformed("header cut off")
			}
			d.hdrs = append(d.hdrs, header{key: d.str(k), value: d.str(v)})
		}
		hdrs = d.hdrs[start:len(d.hdrs):len(d.hdrs)]
	}
	// The job is written in place, field by field: appending a job value
	// copies it with a bulk write barrier while the GC marks.
	if len(d.jobs) == cap(d.jobs) {
		d.jobs = slices.Grow(d.jobs, 1)
	}
	d.jobs = d.jobs[:len(d.jobs)+1]
	j := &d.jobs[len(d.jobs)-1]
	// Every field: the jobs may be a reused response's (see respBuf).
	j.buf, j.off, j.ms = d.buf, off, baseTime
	j.setRecord(value, hdrs)
	if !appendTime {
		j.ms += tsDelta
	}
	j.key = d.str(key)
	return nil
}

// str is b as a string in d.strs.
func (d *decoder) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if cap(d.strs)-len(d.strs) < len(b) {
		// A new buffer: strings point into the old one, which stays as it
		// is.
		d.strs = make([]byte, 0, max(4096, 2*cap(d.strs), len(b)))
	}
	start := len(d.strs)
	d.strs = append(d.strs, b...)
	return unsafe.String(&d.strs[start], len(b))
}

// varint reads a zig-zag varint (Kafka's varint and varlong) at b[*i].
func varint(b []byte, i *int) (int64, bool) {
	if *i < len(b) && b[*i] < 0x80 {
		u := uint64(b[*i])
		*i++
		return int64(u>>1) ^ -int64(u&1), true
	}
	if *i+1 < len(b) && b[*i+1] < 0x80 { // two bytes: a record's length, say
		u := uint64(b[*i]&0x7f) | uint64(b[*i+1])<<7
		*i += 2
		return int64(u>>1) ^ -int64(u&1), true
	}
	if *i >= len(b) {
		return 0, false
	}
	v, n := binary.Varint(b[*i:])
	if n <= 0 {
		return 0, false
	}
	*i += n
	return v, true
}

// lenBytes reads a varint length and that many bytes at b[*i]; length -1 is
// nil.
func lenBytes(b []byte, i *int) ([]byte, bool) {
	n, ok := varint(b, i)
	switch {
	case !ok || n < -1 || n > int64(len(b)-*i):
		return nil, false
	case n == -1:
		return nil, true
	}
	p := b[*i : *i+int(n) : *i+int(n)]
	*i += int(n)
	return p, true
}

// dontExpectEOF is err, with io.EOF as io.ErrUnexpectedEOF: a response cut
// off is not the end of anything.
func dontExpectEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
