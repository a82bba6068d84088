package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
)

// writesConn records each Write it gets.
type writesConn struct {
	net.Conn
	writes [][]byte
	err    error
}

func (c *writesConn) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func frame(body int) []byte {
	b := make([]byte, 4+body)
	binary.BigEndian.PutUint32(b, uint32(body))
	for i := range body {
		b[4+i] = byte(i)
	}
	return b
}

// A request is one write, however kafka-go cuts it; bytes that are not a
// frame's start go out as they come.
func TestTrackedConnCoalesces(t *testing.T) {
	w := &writesConn{}
	c := &trackedConn{Conn: w, coalesce: true}
	big, small := frame(150_000), frame(100)
	for _, part := range [][]byte{big[:65536], big[65536:131072], big[131072:], small, {1, 2}} {
		if n, err := c.Write(part); n != len(part) || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", len(part), n, err)
		}
	}
	if len(w.writes) != 3 || !bytes.Equal(w.writes[0], big) || !bytes.Equal(w.writes[1], small) || !bytes.Equal(w.writes[2], []byte{1, 2}) {
		t.Fatalf("writes of %d bytes each: %v", len(w.writes), lens(w.writes))
	}

	// Larger than maxCoalesce: as kafka-go writes it.
	w.writes = nil
	huge := frame(maxCoalesce)
	c.Write(huge[:65536])
	c.Write(huge[65536:])
	if len(w.writes) != 2 {
		t.Fatalf("huge request: %d writes, want 2", len(w.writes))
	}

	// The error of the write that sends the request is the last Write's.
	w.writes, w.err = nil, errors.New("broken")
	c.Write(big[:65536])
	if n, err := c.Write(big[65536:]); n != 0 || !errors.Is(err, w.err) {
		t.Fatalf("last Write = %d, %v; want 0, broken", n, err)
	}
	// The connection is no longer mid-request.
	w.err = nil
	c.Write(small)
	if len(w.writes) != 1 || !bytes.Equal(w.writes[0], small) {
		t.Fatalf("after the error: %v", lens(w.writes))
	}
}

// A produce request of 4 KiB records as kafka-go writes it is one write.
func TestTrackedConnProduceRequest(t *testing.T) {
	w := &writesConn{}
	c := &trackedConn{Conn: w, coalesce: true}
	records := make([]kafkago.Record, 40)
	for i := range records {
		records[i].Value = kafkago.NewBytes(make([]byte, 4096))
	}
	req := &produceAPI.Request{Acks: -1, Timeout: 1000, Topics: []produceAPI.RequestTopic{{Topic: "t",
		Partitions: []produceAPI.RequestPartition{{RecordSet: protocol.RecordSet{Records: kafkago.NewRecordReader(records...)}}}}}}
	if err := protocol.WriteRequest(c, 7, 1, "test", req); err != nil {
		t.Fatal(err)
	}
	if len(w.writes) != 1 || len(w.writes[0]) < 40*4096 {
		t.Fatalf("writes of %v bytes, want one of the whole request", lens(w.writes))
	}
	if n := binary.BigEndian.Uint32(w.writes[0]); int(n) != len(w.writes[0])-4 {
		t.Fatalf("size %d in a write of %d bytes", n, len(w.writes[0]))
	}
}

func lens(b [][]byte) []int {
	var n []int
	for _, x := range b {
		n = append(n, len(x))
	}
	return n
}
