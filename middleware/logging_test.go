package middleware_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/busway/busway/middleware"
)

func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestLogging(t *testing.T) {
	ctx := context.Background()
	var buf bytes.Buffer
	lg := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	// Success: nothing by default.
	_ = middleware.Logging(lg, middleware.LoggingOptions{})(ok)(ctx, msg("m1"))
	if buf.Len() != 0 {
		t.Fatalf("logged a success: %s", buf.String())
	}
	_ = middleware.Logging(lg, middleware.LoggingOptions{LogSuccess: true})(ok)(ctx, msg("m1"))
	if l := logLines(t, &buf); len(l) != 1 || l[0]["level"] != "DEBUG" {
		t.Fatalf("LogSuccess: %v", l)
	}
	buf.Reset()

	// Failure after retries: one line with topic, group, id, attempt, attempts, error.
	h := middleware.Chain(middleware.Logging(lg, middleware.LoggingOptions{}), middleware.Retry(tinyRetry(3)))(failing(errBoom))
	_ = h(ctx, msg("m1"))
	l := logLines(t, &buf)
	if len(l) != 1 {
		t.Fatalf("%d lines, want 1", len(l))
	}
	want := map[string]any{"level": "ERROR", "topic": "orders", "group": "billing", "id": "m1", "attempt": 1.0, "attempts": 3.0}
	for k, v := range want {
		if l[0][k] != v {
			t.Errorf("%s = %v, want %v", k, l[0][k], v)
		}
	}
	if !strings.Contains(l[0]["error"].(string), "boom") {
		t.Errorf("error %v", l[0]["error"])
	}
	buf.Reset()

	// Dead-lettered: one warning naming the DLQ topic.
	h = middleware.Chain(middleware.Logging(lg, middleware.LoggingOptions{}),
		middleware.DeadLetter(&fakePub{}, middleware.DeadLetterOptions{}), middleware.Retry(tinyRetry(2)))(failing(errBoom))
	if err := h(ctx, msg("m1")); err != nil {
		t.Fatal(err)
	}
	l = logLines(t, &buf)
	if len(l) != 1 || l[0]["level"] != "WARN" || l[0]["dlq_topic"] != "orders.dlq" || l[0]["attempts"] != 2.0 {
		t.Fatalf("dead-letter line: %v", l)
	}

	// nil logger: passes through.
	if err := middleware.Logging(nil, middleware.LoggingOptions{})(failing(errBoom))(ctx, msg("m1")); err != errBoom {
		t.Fatal(err)
	}
}
