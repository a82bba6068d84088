package nats

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/busway/busway/transport"
)

// startEmbedded starts the in-process server of e and waits until it
// accepts connections or ctx ends.
func startEmbedded(ctx context.Context, e *EmbeddedConfig, log *slog.Logger) (*server.Server, error) {
	opts := &server.Options{
		ServerName: e.ServerName,
		Host:       e.Host,
		Port:       e.Port,
		DontListen: e.NoListen,
		JetStream:  true,
		StoreDir:   e.StoreDir,
		MaxPayload: e.MaxPayload,
		NoSigs:     true,
	}
	if opts.ServerName == "" {
		opts.ServerName = "busway-embedded"
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: nats: embedded server: %v", transport.ErrInvalidOptions, err)
	}
	s.SetLoggerV2(serverLogger{log.With("component", "nats-server")}, false, false, false)
	// Start runs the server's goroutines and returns; readiness is polled
	// below so that ctx can cut the wait short.
	s.Start()
	deadline := time.Now().Add(10 * time.Second)
	for !s.ReadyForConnections(20 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			stopServer(s)
			return nil, err
		}
		if time.Now().After(deadline) {
			stopServer(s)
			return nil, fmt.Errorf("%w: nats: embedded server (store %s) not ready after 10s", transport.ErrUnavailable, e.StoreDir)
		}
	}
	return s, nil
}

// stopServer shuts s down and waits until its goroutines have ended.
func stopServer(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

// serverLogger routes the embedded server's log to slog.
type serverLogger struct{ l *slog.Logger }

func (l serverLogger) log(level slog.Level, format string, v []any) {
	if l.l.Enabled(context.Background(), level) {
		l.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
	}
}

func (l serverLogger) Noticef(format string, v ...any) { l.log(slog.LevelInfo, format, v) }
func (l serverLogger) Warnf(format string, v ...any)   { l.log(slog.LevelWarn, format, v) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.log(slog.LevelError, format, v) }
func (l serverLogger) Errorf(format string, v ...any)  { l.log(slog.LevelError, format, v) }
func (l serverLogger) Debugf(format string, v ...any)  { l.log(slog.LevelDebug, format, v) }
func (l serverLogger) Tracef(format string, v ...any)  { l.log(slog.LevelDebug-4, format, v) }
