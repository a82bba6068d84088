package middleware

import (
	"context"
	"log/slog"
	"time"

	"github.com/busway/busway/transport"
)

// LoggingOptions configure Logging. The zero value means the defaults.
type LoggingOptions struct {
	// LogSuccess also logs each message handled successfully (or skipped as
	// a duplicate), at slog.LevelDebug. Default false: failures only.
	LogSuccess bool
}

// Logging writes one line to logger per failed message: at slog.LevelError
// "busway: message failed" when the chain returned an error (the message is
// redelivered), and at slog.LevelWarn "busway: message dead-lettered" when
// DeadLetter parked it. Each line has topic, group, id, attempt (the
// transport's delivery count), attempts (handler calls, from Retry), error
// and duration; a dead-lettered one also dlq_topic. A nil logger logs
// nothing.
//
// Place it just inside Metrics, outside DeadLetter, for one line per
// delivery; inside Retry it logs each failed attempt instead (attempt
// numbers from RetryAttempt).
func Logging(logger *slog.Logger, opts LoggingOptions) Middleware {
	return func(next transport.Handler) transport.Handler {
		if logger == nil {
			return next
		}
		return func(ctx context.Context, m *transport.Message) error {
			ctx, r := withReport(ctx)
			start := time.Now()
			err := next(ctx, m)
			switch {
			case err != nil:
				if logger.Enabled(ctx, slog.LevelError) {
					logger.LogAttrs(ctx, slog.LevelError, "busway: message failed",
						msgAttrs(ctx, m, start, Attempts(err), err)...)
				}
			case r.deadLettered:
				if logger.Enabled(ctx, slog.LevelWarn) {
					logger.LogAttrs(ctx, slog.LevelWarn, "busway: message dead-lettered",
						append(msgAttrs(ctx, m, start, r.attempts, r.err), slog.String("dlq_topic", r.dlqTopic))...)
				}
			case opts.LogSuccess && logger.Enabled(ctx, slog.LevelDebug):
				msg := "busway: message handled"
				if r.duplicate {
					msg = "busway: duplicate message skipped"
				}
				logger.LogAttrs(ctx, slog.LevelDebug, msg, msgAttrs(ctx, m, start, RetryAttempt(ctx), nil)...)
			}
			return err
		}
	}
}

func msgAttrs(ctx context.Context, m *transport.Message, start time.Time, attempts int, err error) []slog.Attr {
	if attempts == 1 {
		// Inside Retry an error carries no count: say which attempt ran.
		attempts = RetryAttempt(ctx)
	}
	a := []slog.Attr{
		slog.String("topic", m.Topic),
		slog.String("group", m.Group),
		slog.String("id", m.ID),
		slog.Int("attempt", m.Attempt),
		slog.Int("attempts", attempts),
		slog.Duration("duration", time.Since(start)),
	}
	if err != nil {
		a = append(a, slog.String("error", err.Error()))
	}
	return a
}
