package kafka

import (
	"context"
	"net"
	"sync"
)

// connTracker dials the kafka-go Transport's connections and closes every
// one still open at Close: kafka-go finishes a connection attempt in a
// goroutine of its own, even after the request that wanted it gave up, and
// a closed connection makes that goroutine end at once.
type connTracker struct {
	d      net.Dialer
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
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
	tc := &trackedConn{Conn: c, ct: ct}
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
	ct *connTracker
}

func (c *trackedConn) Close() error {
	c.ct.mu.Lock()
	delete(c.ct.conns, c)
	c.ct.mu.Unlock()
	return c.Conn.Close()
}
