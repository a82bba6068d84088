package kafka

import (
	"bufio"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// fetchConns are the connections of one partition's fetch loop. A
// kafka-go Conn cannot interrupt a fetch that the broker holds open (up to
// Config.FetchMaxWait when the partition has no new records) on a context:
// every Subscription.Close and every revoked partition would wait most of
// FetchMaxWait. Once stopped, every read deadline of these connections is
// in the past: the fetch in flight fails at once and the loop, whose
// context is already canceled, returns.
type fetchConns struct {
	stopped atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
}

// dialer is base with a DialFunc that registers each connection.
func (f *fetchConns) dialer(base *kafkago.Dialer) *kafkago.Dialer {
	d := *base
	dial := base.DialFunc
	if dial == nil {
		// What kafka-go's Dialer does without a DialFunc (DualStack, which
		// it also copies, is the net package's default).
		dial = (&net.Dialer{
			LocalAddr:     base.LocalAddr,
			FallbackDelay: base.FallbackDelay,
			KeepAlive:     base.KeepAlive,
		}).DialContext
	}
	d.DialFunc = func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		sc := &stoppableConn{Conn: c, f: f}
		sc.r = bufio.NewReaderSize(c, fetchReadBuffer)
		f.mu.Lock()
		f.conns = append(f.conns, sc)
		f.mu.Unlock()
		if f.stopped.Load() {
			_ = sc.SetReadDeadline(time.Time{})
		}
		return sc, nil
	}
	return &d
}

// stop interrupts the reads in flight and every later one.
func (f *fetchConns) stop() {
	f.stopped.Store(true)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		_ = c.SetReadDeadline(time.Time{})
	}
}

var pastDeadline = time.Unix(1, 0)

// stoppableConn is a connection whose read deadline is in the past once its
// reader stopped, whatever deadline kafka-go sets. Its reads are buffered
// (fetchReadBuffer): a kafka-go Conn reads through a 4 KiB bufio.Reader,
// which takes a read system call for every 4 KiB of a fetch response (at
// 4 KiB records, one per record).
type stoppableConn struct {
	net.Conn
	f *fetchConns
	r *bufio.Reader
}

// fetchReadBuffer is the read buffer of a fetch connection: a 2 MiB fetch
// response is read in eight system calls, not five hundred.
const fetchReadBuffer = 256 << 10

// Read reads from the buffer, which is filled with at most one read of the
// connection when it is empty (as the connection, it never waits for more
// than the connection has).
func (c *stoppableConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *stoppableConn) SetReadDeadline(t time.Time) error {
	if c.f.stopped.Load() {
		t = pastDeadline
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *stoppableConn) SetDeadline(t time.Time) error {
	if c.f.stopped.Load() {
		if err := c.Conn.SetWriteDeadline(t); err != nil {
			return err
		}
		return c.Conn.SetReadDeadline(pastDeadline)
	}
	return c.Conn.SetDeadline(t)
}
