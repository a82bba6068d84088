package kafka

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// fetchConns are the connections of one partition's fetch loop. A read
// blocked on a connection does not end with a context: a fetch that the
// broker holds open (up to Config.FetchMaxWait when the partition has no
// new records) would make every Subscription.Close and every revoked
// partition wait most of FetchMaxWait, and a kafka-go request (ListOffsets)
// likewise. Once stopped, every read deadline of these connections is in
// the past, whatever deadline the fetch loop or kafka-go sets: the read in
// flight fails at once and the loop, whose context is already canceled,
// returns.
type fetchConns struct {
	stopped atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
	last    *stoppableConn // the connection dialed last
}

// dialer is base with a DialFunc that registers each connection. The
// DialFunc also does base's TLS handshake, so that the connection it
// registers (on which the fetch requests go: see fetchConn) is the one
// that carries Kafka's bytes.
func (f *fetchConns) dialer(base *kafkago.Dialer) *kafkago.Dialer {
	d := *base
	d.TLS = nil
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
		if base.TLS != nil {
			if c, err = handshakeTLS(ctx, c, base.TLS, address); err != nil {
				return nil, err
			}
		}
		sc := &stoppableConn{Conn: c, f: f}
		sc.r = bufio.NewReaderSize(c, fetchReadBuffer)
		f.mu.Lock()
		f.conns = append(f.conns, sc)
		f.last = sc
		f.mu.Unlock()
		if f.stopped.Load() {
			_ = sc.SetReadDeadline(time.Time{})
		}
		return sc, nil
	}
	return &d
}

// handshakeTLS is what kafka-go's Dialer does with its TLS config: a
// client handshake on c, the server name taken from address unless cfg
// has one.
func handshakeTLS(ctx context.Context, c net.Conn, cfg *tls.Config, address string) (net.Conn, error) {
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName = address
		if i := strings.LastIndex(address, ":"); i >= 0 {
			cfg.ServerName = address[:i]
		}
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// takeLast returns the connection dialed last, once.
func (f *fetchConns) takeLast() *stoppableConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.last
	f.last = nil
	return c
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
// (fetchReadBuffer) so that a fetch response's size and first bytes take
// one read system call; the rest of the response is read straight into
// its buffer (see fetchOnce).
type stoppableConn struct {
	net.Conn
	f *fetchConns
	r *bufio.Reader
}

// fetchReadBuffer is the read buffer of a fetch connection. A read larger
// than it, as most of a fetch response's, bypasses it.
const fetchReadBuffer = 16 << 10

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
