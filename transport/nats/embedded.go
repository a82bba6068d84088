package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
	// The server reports an unusable store only in its log, and then never
	// becomes ready: find out at once, with the cause.
	if err := checkStoreDir(e.StoreDir); err != nil {
		return nil, fmt.Errorf("nats: embedded server: store_dir %q is not a usable directory: %w: %w", e.StoreDir, transport.ErrInvalidOptions, err)
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

// checkStoreDir creates dir if needed and checks that a file can be
// written in it.
func checkStoreDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".busway-probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	return errors.Join(f.Close(), os.Remove(name))
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
