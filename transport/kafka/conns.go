package kafka

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
)

// connTracker dials the kafka-go Transport's connections and closes every
// one still open at Close: kafka-go finishes a connection attempt in a
// goroutine of its own, even after the request that wanted it gave up, and
// a closed connection makes that goroutine end at once.
type connTracker struct {
	d net.Dialer
	// coalesce: the connections carry Kafka's framing as kafka-go writes it
	// (no TLS under it), and each request goes out in one write (see
	// trackedConn.Write).
	coalesce bool
	mu       sync.Mutex
	conns    map[*trackedConn]struct{}
	closed   bool
}

func (ct *connTracker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := ct.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if ct.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	if ct.conns == nil {
		ct.conns = make(map[*trackedConn]struct{})
	}
	tc := &trackedConn{Conn: c, ct: ct, coalesce: ct.coalesce}
	ct.conns[tc] = struct{}{}
	return tc, nil
}

func (ct *connTracker) closeAll() {
	ct.mu.Lock()
	ct.closed = true
	conns := ct.conns
	ct.conns = nil
	ct.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	ct       *connTracker
	coalesce bool
	wbuf     []byte // the current request's bytes written so far, when buffered
	pending  int    // how many of its bytes are still to come
}

// maxCoalesce is the largest request sent in one write; a larger one goes
// out in kafka-go's writes, 64 KiB each.
const maxCoalesce = 1 << 20

// Write sends each Kafka request in one write system call. kafka-go encodes
// a request into 64 KiB pages and writes them one by one: a produce request
// of 33 records of 4 KiB was three writes, and the broker's three reads (and
// wake-ups) to gather it. A request that one Write holds whole, as every
// request under 64 KiB, is written as it is, uncopied; a larger one is
// gathered here and written once its last byte came. kafka-go writes a
// request's bytes from one goroutine, a request at a time, each starting at
// a Write with its 4-byte size; bytes that do not look like that are
// written as they come.
func (c *trackedConn) Write(p []byte) (int, error) {
	if !c.coalesce {
		return c.Conn.Write(p)
	}
	if c.pending == 0 {
		if len(p) < 4 {
			return c.Conn.Write(p)
		}
		total := 4 + int64(binary.BigEndian.Uint32(p))
		if total <= int64(len(p)) || total > maxCoalesce {
			return c.Conn.Write(p)
		}
		c.wbuf = append(c.wbuf[:0], p...)
		c.pending = int(total) - len(p)
		return len(p), nil
	}
	c.wbuf = append(c.wbuf, p...)
	c.pending = max(c.pending-len(p), 0) // more than announced: written with the rest
	if c.pending > 0 {
		return len(p), nil
	}
	n, err := c.Conn.Write(c.wbuf)
	held := len(c.wbuf) - len(p) // accepted by earlier Writes
	c.wbuf = c.wbuf[:0]
	if err != nil {
		return max(n-held, 0), err
	}
	return len(p), nil
}

func (c *trackedConn) Close() error {
	c.ct.mu.Lock()
	delete(c.ct.conns, c)
	c.ct.mu.Unlock()
	return c.Conn.Close()
}
