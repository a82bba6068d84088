package kafka

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/busway/busway/internal/tlsfiles"
	"github.com/busway/busway/transport"
)

// probe sends an ApiVersions request (version 0, the one every broker
// answers) to the first broker that accepts a connection and reads the
// head of the answer, within DialTimeout. A service that is not Kafka (a
// NATS server speaks first, an HTTP server answers with text) gives an
// error wrapping transport.ErrUnavailable that says so at once; kafka-go
// would read its bytes as a response of gigabytes and hold a goroutine
// decoding them. Brokers that cannot be dialled are left to the caller,
// whose request classifies them.
func probe(ctx context.Context, brokers []string, timeout time.Duration, tlsCfg *tls.Config) error {
	d := net.Dialer{Timeout: timeout}
	for _, addr := range brokers {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			continue
		}
		err = probeConn(ctx, conn, addr, timeout, tlsCfg)
		conn.Close()
		return err
	}
	return nil
}

func probeConn(ctx context.Context, conn net.Conn, addr string, timeout time.Duration, tlsCfg *tls.Config) error {
	deadline, ctxBound := time.Now().Add(timeout), false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ctxBound = d, true
	}
	_ = conn.SetDeadline(deadline)
	if tlsCfg != nil {
		c := tlsCfg.Clone()
		if c.ServerName == "" {
			c.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(conn, c)
		if err := tc.HandshakeContext(ctx); err != nil {
			if tlsfiles.VerifyFailed(err) {
				return fmt.Errorf("%w: %s: TLS handshake: the broker's certificate is not trusted (Config.TLS, URL option tls_ca): %w", transport.ErrAuthentication, addr, err)
			}
			return fmt.Errorf("%w: %s: TLS handshake: %w", transport.ErrUnavailable, addr, err)
		}
		conn = tc
	}
	const correlationID = 0x62757377 // "busw"
	clientID := "busway-probe"
	req := make([]byte, 0, 4+10+len(clientID))
	req = binary.BigEndian.AppendUint32(req, uint32(10+len(clientID)))
	req = binary.BigEndian.AppendUint16(req, 18) // ApiVersions
	req = binary.BigEndian.AppendUint16(req, 0)  // version 0
	req = binary.BigEndian.AppendUint32(req, correlationID)
	req = binary.BigEndian.AppendUint16(req, uint16(len(clientID)))
	req = append(req, clientID...)
	if _, err := conn.Write(req); err != nil {
		return nil // a write error: let the client's request classify it
	}
	var head [8]byte // response size, correlation ID
	n, err := io.ReadFull(conn, head[:])
	switch {
	case err == nil:
	case isNetTimeout(err) && ctxBound:
		return context.DeadlineExceeded // the caller's deadline, as the context would say a moment later
	case isNetTimeout(err) && ctx.Err() == nil:
		return fmt.Errorf("%w: %s accepted the connection but sent no Kafka response within dial_timeout %v (is it a Kafka broker?)", transport.ErrUnavailable, addr, timeout)
	case ctx.Err() != nil:
		return ctx.Err()
	case n > 0 && errors.Is(err, io.ErrUnexpectedEOF):
		return notKafka(addr, head[:n])
	default:
		return nil // closed without a word: let the client's request classify it
	}
	size, id := binary.BigEndian.Uint32(head[:4]), binary.BigEndian.Uint32(head[4:])
	if id != correlationID || size < 6 || size > 1<<20 {
		return notKafka(addr, head[:])
	}
	return nil
}

func notKafka(addr string, answer []byte) error {
	return fmt.Errorf("%w: %s is not a Kafka broker: it answered %s", transport.ErrUnavailable, addr, strconv.Quote(string(answer)))
}
