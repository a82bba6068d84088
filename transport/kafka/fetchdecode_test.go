package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// rawFetch sends this package's Fetch request for topic's partition from
// offset to the broker at addr and returns the partition's record bytes as
// the response holds them (or the partition's error).
func rawFetch(t *testing.T, addr, topic string, partition int32, offset int64) ([]byte, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(appendFetchRequest(nil, 7, "test", topic, partition, offset, 10, 1<<20)); err != nil {
		t.Fatal(err)
	}
	var size [4]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint32(size[:]))
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	return parseFetchResponse(body, 7, topic, partition)
}

// produced is what a test produced to a partition, by offset.
type produced struct {
	key, value []byte
	headers    []kgo.RecordHeader
}

// kgoCluster is a one-broker kfake cluster with a one-partition topic, and
// a kgo client producing to it with opts.
func kgoCluster(t *testing.T, opts ...kgo.Opt) (addr, topic string, cl *kgo.Client) {
	t.Helper()
	topic = "decode"
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr = c.ListenAddrs()[0]
	// The linger makes each ProduceSync one batch.
	cl, err = kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(50 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return addr, topic, cl
}

// produceVaried produces n records in one batch: keys, nil keys, nil and
// empty values, headers (a nil value among them).
func produceVaried(t *testing.T, cl *kgo.Client, n int) []produced {
	t.Helper()
	var want []produced
	var recs []*kgo.Record
	for i := range n {
		p := produced{value: bytes.Repeat([]byte{byte('a' + i%26)}, 1+i*37%300)}
		switch i % 5 {
		case 1:
			p.key = []byte("key-" + strconv.Itoa(i))
		case 2:
			p.key, p.value = []byte("k"), nil
		case 3:
			p.value = []byte{}
			p.headers = []kgo.RecordHeader{{Key: "ce_id", Value: []byte("id-" + strconv.Itoa(i))}, {Key: "empty", Value: nil}}
		case 4:
			p.key = []byte("hk")
			p.headers = []kgo.RecordHeader{{Key: "content-type", Value: []byte("text/plain")}}
		}
		want = append(want, p)
		recs = append(recs, &kgo.Record{Key: p.key, Value: p.value, Headers: p.headers})
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	return want
}

// checkJobs compares decoded jobs with what was produced from offset from.
func checkJobs(t *testing.T, jobs []job, want []produced, from int64) {
	t.Helper()
	if len(jobs) != len(want)-int(from) {
		t.Fatalf("%d records decoded, want %d", len(jobs), len(want)-int(from))
	}
	for i, j := range jobs {
		off := from + int64(i)
		w := want[off]
		if j.off != off {
			t.Errorf("record %d: offset %d", i, j.off)
		}
		if j.key != string(w.key) {
			t.Errorf("offset %d: key %q, want %q", off, j.key, w.key)
		}
		if !bytes.Equal(j.value(), w.value) || (j.value() == nil) != (w.value == nil) {
			t.Errorf("offset %d: value %q (nil %v), want %q (nil %v)", off, j.value(), j.value() == nil, w.value, w.value == nil)
		}
		var hs []header
		for _, h := range w.headers {
			hs = append(hs, header{key: h.Key, value: string(h.Value)})
		}
		if !slices.Equal(j.headers(), hs) {
			t.Errorf("offset %d: headers %v, want %v", off, j.headers(), hs)
		}
		if d := time.Since(recordTime(j.ms)); d < 0 || d > time.Minute {
			t.Errorf("offset %d: timestamp %v, not just now", off, recordTime(j.ms))
		}
	}
}

// Batches as kgo produces them, with every compression codec, decode to
// the records produced, from the fetch's offset on (the broker returns
// whole batches: a fetch from inside one begins before it).
func TestDecodeKgoBatches(t *testing.T) {
	for _, c := range []struct {
		name  string
		codec kgo.CompressionCodec
	}{
		{"none", kgo.NoCompression()},
		{"gzip", kgo.GzipCompression()},
		{"snappy", kgo.SnappyCompression()},
		{"lz4", kgo.Lz4Compression()},
		{"zstd", kgo.ZstdCompression()},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr, topic, cl := kgoCluster(t, kgo.ProducerBatchCompression(c.codec))
			want := produceVaried(t, cl, 50)
			want = append(want, produceVaried(t, cl, 30)...) // a second batch
			for _, from := range []int64{0, 7, 50, 61} {
				recs, err := rawFetch(t, addr, topic, 0, from)
				if err != nil {
					t.Fatal(err)
				}
				if c.name != "none" {
					if attrs := binary.BigEndian.Uint16(recs[batchAttrsOffset:]); attrs&attrCompression == 0 {
						t.Fatalf("kgo's batch is not compressed (attributes %#x)", attrs)
					}
				}
				var d decoder
				next, err := d.decode(recs, from)
				if err != nil {
					t.Fatal(err)
				}
				if next != int64(len(want)) {
					t.Errorf("from %d: next offset %d, want %d", from, next, len(want))
				}
				checkJobs(t, d.jobs, want, from)
			}
		})
	}
}

// A batch cut off at the response's end (the broker stops at its byte
// limit) is left to the next fetch: the complete ones decode, and the next
// offset is the cut batch's first.
func TestDecodeTruncatedBatch(t *testing.T) {
	addr, topic, cl := kgoCluster(t)
	want := produceVaried(t, cl, 20)
	want = append(want, produceVaried(t, cl, 20)...)
	recs, err := rawFetch(t, addr, topic, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The last batch's start and first offset.
	lastStart, lastBase := 0, int64(0)
	for i := 0; i < len(recs); i += 12 + int(binary.BigEndian.Uint32(recs[i+batchLengthOffset:])) {
		lastStart, lastBase = i, int64(binary.BigEndian.Uint64(recs[i:]))
	}
	if lastBase == 0 {
		t.Fatal("one batch only")
	}
	for keep := lastStart; keep < len(recs); keep++ {
		var d decoder
		next, err := d.decode(recs[:keep], 0)
		if err != nil {
			t.Fatalf("cut at %d: %v", keep, err)
		}
		if next != lastBase {
			t.Fatalf("cut at %d: next offset %d, want %d", keep, next, lastBase)
		}
		checkJobs(t, d.jobs, want[:lastBase], 0)
	}
}

// Transaction markers (control batches) are skipped, and the next offset
// passes them; with read uncommitted, as before, an aborted transaction's
// records are delivered too.
func TestDecodeTransactions(t *testing.T) {
	addr, topic, cl := kgoCluster(t, kgo.TransactionalID("tx"))
	ctx := context.Background()
	var want []produced
	for _, commit := range []kgo.TransactionEndTry{kgo.TryCommit, kgo.TryAbort, kgo.TryCommit} {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		want = append(want, produceVaried(t, cl, 5)...)
		if err := cl.EndTransaction(ctx, commit); err != nil {
			t.Fatal(err)
		}
	}
	// Offsets: 5 records and a marker per transaction.
	var all []byte
	for off := int64(0); off < 18; {
		recs, err := rawFetch(t, addr, topic, 0, off)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, recs...)
		var d decoder
		next, err := d.decode(recs, off)
		if err != nil {
			t.Fatal(err)
		}
		if next <= off {
			t.Fatalf("no progress from offset %d", off)
		}
		off = next
	}
	var d decoder
	next, err := d.decode(all, 0)
	if err != nil {
		t.Fatal(err)
	}
	if next != 18 {
		t.Errorf("next offset %d, want 18 (past the last marker)", next)
	}
	if len(d.jobs) != 15 {
		t.Fatalf("%d records, want 15 (no marker)", len(d.jobs))
	}
	for i, j := range d.jobs {
		if wantOff := int64(i + i/5); j.off != wantOff {
			t.Errorf("record %d at offset %d, want %d", i, j.off, wantOff)
		}
		if j.key != string(want[i].key) || !bytes.Equal(j.value(), want[i].value) {
			t.Errorf("record %d: %q=%q, want %q=%q", i, j.key, j.value(), want[i].key, want[i].value)
		}
	}
}

// testRecord is a record for encodeBatch.
type testRecord struct {
	offsetDelta int
	key, value  []byte
}

// encodeBatch is a record batch v2 (uncompressed) at base, holding recs and
// ending at base+lastDelta, with a valid CRC.
func encodeBatch(base int64, lastDelta int32, attrs int16, recs ...testRecord) []byte {
	var body []byte
	for _, r := range recs {
		var rec []byte
		rec = append(rec, 0)
		rec = binary.AppendVarint(rec, int64(r.offsetDelta)) // timestamp delta
		rec = binary.AppendVarint(rec, int64(r.offsetDelta))
		for _, f := range [][]byte{r.key, r.value} {
			if f == nil {
				rec = binary.AppendVarint(rec, -1)
			} else {
				rec = binary.AppendVarint(rec, int64(len(f)))
				rec = append(rec, f...)
			}
		}
		rec = binary.AppendVarint(rec, 0)
		body = binary.AppendVarint(body, int64(len(rec)))
		body = append(body, rec...)
	}
	b := binary.BigEndian.AppendUint64(nil, uint64(base))
	b = binary.BigEndian.AppendUint32(b, 0) // length, below
	b = binary.BigEndian.AppendUint32(b, 0) // leader epoch
	b = append(b, 2)
	b = binary.BigEndian.AppendUint32(b, 0) // crc, below
	b = binary.BigEndian.AppendUint16(b, uint16(attrs))
	b = binary.BigEndian.AppendUint32(b, uint32(lastDelta))
	b = binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, ^uint64(0)) // producer id -1
	b = binary.BigEndian.AppendUint16(b, 0xffff)
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	b = binary.BigEndian.AppendUint32(b, uint32(len(recs)))
	b = append(b, body...)
	binary.BigEndian.PutUint32(b[batchLengthOffset:], uint32(len(b)-12))
	fixCRC(b)
	return b
}

func fixCRC(batch []byte) {
	binary.BigEndian.PutUint32(batch[batchCRCOffset:], crc32.Checksum(batch[batchAttrsOffset:], castagnoli))
}

// A compacted batch (offsets missing inside it and at its end) yields the
// records it has, and the next fetch starts past its last offset.
func TestDecodeCompactedGap(t *testing.T) {
	recs := encodeBatch(100, 9, 0,
		testRecord{0, []byte("a"), []byte("1")},
		testRecord{3, []byte("b"), []byte("2")},
		testRecord{4, nil, []byte("3")})
	recs = append(recs, encodeBatch(110, 0, 0, testRecord{0, []byte("c"), []byte("4")})...)
	var d decoder
	next, err := d.decode(recs, 101)
	if err != nil {
		t.Fatal(err)
	}
	if next != 111 {
		t.Errorf("next offset %d, want 111", next)
	}
	var offs []int64
	for _, j := range d.jobs {
		offs = append(offs, j.off)
	}
	if !slices.Equal(offs, []int64{103, 104, 110}) {
		t.Errorf("offsets %v, want [103 104 110]", offs)
	}
}

// What cannot be read is an error naming it, with the records before it
// decoded and the next offset at the unreadable batch: it is fetched again,
// never skipped.
func TestDecodeUnreadable(t *testing.T) {
	good := encodeBatch(0, 1, 0, testRecord{0, []byte("a"), []byte("1")}, testRecord{1, []byte("b"), []byte("2")})
	bad := encodeBatch(2, 0, 0, testRecord{0, []byte("c"), []byte("3")})
	corrupt := slices.Clone(bad)
	corrupt[len(corrupt)-2] ^= 1
	unknownCodec := encodeBatch(2, 0, 5, testRecord{0, []byte("c"), []byte("3")})
	v1 := slices.Clone(bad)
	v1[batchMagicOffset] = 1
	cutRecord := slices.Clone(bad)
	cutRecord = cutRecord[:len(cutRecord)-3]
	binary.BigEndian.PutUint32(cutRecord[batchLengthOffset:], uint32(len(cutRecord)-12))
	fixCRC(cutRecord)
	for name, c := range map[string]struct {
		batch []byte
		want  error
	}{
		"crc":          {corrupt, errMalformed},
		"codec":        {unknownCodec, errMalformed},
		"magic 1":      {v1, errors.ErrUnsupported},
		"record cut":   {cutRecord, errMalformed},
		"negative len": {append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, 2), 0xffffff00), make([]byte, 60)...), errMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			var d decoder
			next, err := d.decode(append(slices.Clone(good), c.batch...), 0)
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
			t.Log(err)
			if next != 2 || len(d.jobs) != 2 {
				t.Errorf("next offset %d, %d records; want 2, 2", next, len(d.jobs))
			}
		})
	}
}

// A partition error is the kafka-go Error the fetch loop acts on.
func TestParseFetchResponseErrors(t *testing.T) {
	addr, topic, cl := kgoCluster(t)
	produceVaried(t, cl, 3)
	if _, err := rawFetch(t, addr, topic, 0, 50); !errors.Is(err, kafkago.OffsetOutOfRange) {
		t.Errorf("fetch past the end: %v, want OffsetOutOfRange", err)
	}
	if _, err := rawFetch(t, addr, topic, 5, 0); !errors.Is(err, kafkago.UnknownTopicOrPartition) {
		t.Errorf("fetch of a missing partition: %v, want UnknownTopicOrPartition", err)
	}
	recs, err := rawFetch(t, addr, topic, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The response cut anywhere is an error, never a panic.
	resp := binary.BigEndian.AppendUint32(nil, 7)
	resp = binary.BigEndian.AppendUint32(resp, 0)
	resp = binary.BigEndian.AppendUint32(resp, 1)
	resp = appendString(resp, topic)
	resp = binary.BigEndian.AppendUint32(resp, 1)
	resp = binary.BigEndian.AppendUint32(resp, 0)
	resp = binary.BigEndian.AppendUint16(resp, 0)
	resp = binary.BigEndian.AppendUint64(resp, 3)
	resp = binary.BigEndian.AppendUint64(resp, 3)
	resp = binary.BigEndian.AppendUint32(resp, 0)
	resp = binary.BigEndian.AppendUint32(resp, uint32(len(recs)))
	resp = append(resp, recs...)
	if got, err := parseFetchResponse(resp, 7, topic, 0); err != nil || !bytes.Equal(got, recs) {
		t.Fatalf("parse: %v", err)
	}
	for n := range len(resp) {
		if _, err := parseFetchResponse(resp[:n], 7, topic, 0); err == nil {
			t.Fatalf("response cut at %d of %d bytes parsed", n, len(resp))
		}
	}
	if _, err := parseFetchResponse(resp, 8, topic, 0); !errors.Is(err, errMalformed) {
		t.Errorf("another correlation id: %v", err)
	}
}

// within reports whether p lies inside b's memory.
func within(p, b []byte) bool {
	if len(p) == 0 {
		return true
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	s := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	return s >= start && s+uintptr(len(p)) <= start+uintptr(len(b))
}

// The decoder never panics, and an uncompressed record's value never lies
// outside the bytes decoded. The first batch's CRC is fixed up, so that
// the fuzzer reaches the records.
func FuzzDecode(f *testing.F) {
	f.Add(encodeBatch(0, 1, 0, testRecord{0, []byte("a"), []byte("1")}, testRecord{1, nil, nil}), int64(0))
	f.Add(append(encodeBatch(5, 0, 0, testRecord{0, []byte("k"), []byte("v")}), encodeBatch(6, 3, 0x20)...), int64(5))
	f.Add(encodeBatch(0, 0, 1, testRecord{0, []byte("k"), []byte("v")}), int64(0))
	f.Fuzz(func(t *testing.T, recs []byte, from int64) {
		recs = slices.Clone(recs)
		if len(recs) >= batchHeaderLen {
			if n := 12 + int64(binary.BigEndian.Uint32(recs[batchLengthOffset:])); n >= batchHeaderLen && n <= int64(len(recs)) {
				fixCRC(recs[:n])
			}
		}
		var d decoder
		next, _ := d.decode(recs, from)
		if next < from {
			t.Errorf("next offset %d before %d", next, from)
		}
		compressed := false
		for b := recs; len(b) >= batchHeaderLen; {
			n := 12 + int64(int32(binary.BigEndian.Uint32(b[batchLengthOffset:])))
			if n < 12 || n > int64(len(b)) {
				break
			}
			compressed = compressed || binary.BigEndian.Uint16(b[batchAttrsOffset:])&attrCompression != 0
			b = b[n:]
		}
		for _, j := range d.jobs {
			if j.off < from || j.off >= next {
				t.Errorf("record at offset %d outside [%d, %d)", j.off, from, next)
			}
			if !compressed && !within(j.value(), recs) {
				t.Errorf("value of offset %d outside the records", j.off)
			}
		}
	})
}

// varint reads what binary.AppendVarint writes (Kafka's zig-zag varints).
func TestVarint(t *testing.T) {
	for _, v := range []int64{0, 1, -1, 63, -64, 64, -65, 8191, -8192, 8192, 1 << 20, -1 << 40, 1<<63 - 1, -1 << 63} {
		b := binary.AppendVarint([]byte{9}, v)
		i := 1
		got, ok := varint(append(b, 0xff), &i)
		if !ok || got != v || i != len(b) {
			t.Errorf("varint(%d): %d, %v, read %d of %d bytes", v, got, ok, i-1, len(b)-1)
		}
		for n := 1; n < len(b); n++ {
			i := 1
			if _, ok := varint(b[:n], &i); ok && n < len(b) {
				t.Errorf("varint(%d) cut to %d bytes read", v, n-1)
			}
		}
	}
}

// BenchmarkDecode: a response's worth (1 MiB) of 256-byte records with
// keys, uncompressed; ns/op is per record.
func BenchmarkDecode(b *testing.B) {
	var recs []byte
	var n int64
	for len(recs) < 1<<20 {
		var rs []testRecord
		for i := range 100 {
			rs = append(rs, testRecord{i, []byte("key-" + strconv.Itoa(i%16)), bytes.Repeat([]byte{'v'}, 256)})
		}
		recs = append(recs, encodeBatch(n, 99, 0, rs...)...)
		n += 100
	}
	b.SetBytes(int64(len(recs)) / n)
	b.ResetTimer()
	for i := 0; i < b.N; i += int(n) {
		var d decoder
		if _, err := d.decode(recs, 0); err != nil || len(d.jobs) != int(n) {
			b.Fatal(err, len(d.jobs))
		}
	}
}

// compressBatch is batch (from encodeBatch, uncompressed) with its records
// compressed by codec c, or replaced by body when body is not nil.
func compressBatch(t *testing.T, batch []byte, c compress.Compression, body []byte) []byte {
	t.Helper()
	if body == nil {
		body = batch[batchHeaderLen:]
	}
	var z bytes.Buffer
	w := c.Codec().NewWriter(&z)
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b := append(slices.Clone(batch[:batchHeaderLen]), z.Bytes()...)
	attrs := binary.BigEndian.Uint16(b[batchAttrsOffset:])
	binary.BigEndian.PutUint16(b[batchAttrsOffset:], attrs|uint16(c))
	binary.BigEndian.PutUint32(b[batchLengthOffset:], uint32(len(b)-12))
	fixCRC(b)
	return b
}

// A batch that decompresses past its bound (a decompression bomb: 64 MiB
// and a byte of zeros, some kilobytes compressed) is an error naming the
// batch's offset and the bound, with the records before it decoded and the
// next offset at it (fetched again, never skipped); a batch as
// compressible but under the bound (a record of 8 MiB of zeros) decodes.
func TestDecodeBomb(t *testing.T) {
	good := encodeBatch(0, 1, 0, testRecord{0, []byte("a"), []byte("1")}, testRecord{1, []byte("b"), []byte("2")})
	bound := maxInflated(0)
	big := make([]byte, 8<<20)
	fine := compressBatch(t, encodeBatch(2, 0, 0, testRecord{0, []byte("c"), big}), compress.Zstd, nil)
	bomb := compressBatch(t, encodeBatch(3, 0, 0, testRecord{0, []byte("d"), []byte("4")}), compress.Zstd, make([]byte, bound+1))
	if maxInflated(len(bomb)) != bound {
		t.Fatalf("the bomb's %d compressed bytes have a bound of their own, %d", len(bomb), maxInflated(len(bomb)))
	}
	var d decoder
	next, err := d.decode(slices.Concat(good, fine, bomb), 0)
	if !errors.Is(err, errMalformed) {
		t.Fatalf("error %v, want errMalformed", err)
	}
	t.Log(err)
	for _, want := range []string{"offset 3", fmt.Sprint(bound)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if next != 3 || len(d.jobs) != 3 || len(d.jobs[2].value()) != len(big) {
		t.Errorf("next offset %d, %d records; want 3, 3 (the last of %d bytes)", next, len(d.jobs), len(big))
	}
	if c := d.inflated.Cap(); c > 1<<20 {
		t.Errorf("the decoder keeps %d bytes of the bomb", c)
	}
}
