package kafka

import (
	"strconv"
	"testing"
	"time"
	"unsafe"
)

// BenchmarkFill: a worker's making of the Message of a keyed record
// without headers (BenchmarkKafkaConsume's), and of one with three.
func BenchmarkFill(b *testing.B) {
	s := &subscription{topic: "t", group: "g"}
	buf := &respBuf{p: &partition{idText: "2"}}
	body := make([]byte, 256)
	for _, c := range []struct {
		name    string
		headers []header
	}{
		{"key", nil},
		{"headers", []header{{"ce_id", "id-1"}, {"ce_type", "t"}, {"content-type", "text/plain"}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			jobs := make([]job, 1024)
			for i := range jobs {
				jobs[i] = job{buf: buf, key: "k-" + strconv.Itoa(i), off: int64(1e6 + i), ms: time.Now().UnixMilli()}
				jobs[i].setRecord(body, c.headers)
			}
			var d delivery
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if m := d.fill(s, &jobs[i%len(jobs)], 1); m.Key == "" {
					b.Fatal("no key")
				}
			}
		})
	}
}

// A job stays a cache line on 64-bit platforms (see job).
func TestJobSize(t *testing.T) {
	if s := unsafe.Sizeof(job{}); unsafe.Sizeof(uintptr(0)) == 8 && s != 64 {
		t.Errorf("a job is %d bytes, want 64", s)
	}
}
