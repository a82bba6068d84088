package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
	busnats "github.com/busway/busway/transport/nats"
)

func (a *app) tailCmd() *cobra.Command {
	var (
		group, from string
		types       []string
		asJSON      bool
		count       int
	)
	cmd := &cobra.Command{
		Use:   "tail URL TOPIC",
		Short: "Print the events of a topic as they arrive",
		Long: `tail prints the events of TOPIC as they arrive, one line each (time, type,
key, id, the start of the data), or as JSON lines with --json (CloudEvents
attributes, the data, the other headers). It stops on Ctrl-C (exit 0) or
after --count events.

By default it reads in a group of its own ("busway-tail-<random>"), so the
groups of running services lose nothing, and deletes that group when it exits
(where the broker keeps groups). --group joins an existing group instead: its
members then share their messages with tail, which acks what it prints.`,
		Example: `  busway tail nats://127.0.0.1:4222 orders
  busway tail kafka://localhost:9092 orders --from earliest --type order.created --json | jq .data`,
		Args: args("URL", "TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			start := transport.StartLatest
			switch from {
			case "latest":
			case "earliest":
				start = transport.StartEarliest
			default:
				return usageError{fmt.Errorf("--from %q: want earliest or latest", from)}
			}
			if count < 0 {
				return usageError{fmt.Errorf("--count %d is negative", count)}
			}
			return a.tail(cmd.Context(), argv[0], argv[1], group, start, types, asJSON, count)
		},
	}
	f := cmd.Flags()
	f.StringVar(&group, "group", "", "consume in this existing group (default: a throwaway group of tail's own)")
	f.StringVar(&from, "from", "latest", "where a new group starts: earliest or latest")
	f.StringSliceVar(&types, "type", nil, "print only events of this type (repeatable, or comma-separated)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per event")
	f.IntVar(&count, "count", 0, "exit after this many events (0: run until Ctrl-C)")
	return cmd
}

func (a *app) tail(ctx context.Context, rawURL, topic, group string, start transport.StartPosition, types []string, asJSON bool, count int) error {
	t, err := a.connect(ctx, rawURL)
	if err != nil {
		return err
	}
	defer a.closeTransport(t)
	throwaway := group == ""
	if throwaway {
		group = "busway-tail-" + randomSuffix()
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu      sync.Mutex
		printed int
	)
	h := func(_ context.Context, m *transport.Message) error {
		env, derr := bus.DecodeEnvelope(m)
		if len(types) > 0 && !slices.Contains(types, env.Type) {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if count > 0 && printed >= count {
			return nil
		}
		if asJSON {
			writeJSONLine(a, m, env)
		} else {
			fmt.Fprintln(a.stdout, eventLine(m, env))
		}
		if derr != nil {
			fmt.Fprintf(a.stderr, "busway: warning: event %s: %v\n", env.ID, derr)
		}
		printed++
		if count > 0 && printed >= count {
			stop()
		}
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, a.timeout)
	opts := transport.SubscribeOptions{Group: group, StartFrom: start}
	if throwaway {
		opts.Specific = throwawayOptions()
	}
	sub, err := t.Subscribe(sctx, topic, h, opts)
	cancel()
	if err != nil {
		return fmt.Errorf("subscribe to %q: %w", topic, err)
	}
	what := "group " + group
	if throwaway {
		what = "throwaway group " + group
	}
	fmt.Fprintf(a.stderr, "busway: tailing %q on %s (%s, from %s); Ctrl-C to stop\n", topic, transport.RedactRaw(rawURL), what, start)
	<-ctx.Done()
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	defer ccancel()
	if err := sub.Close(cctx); err != nil {
		fmt.Fprintf(a.stderr, "busway: closing the subscription: %v\n", err)
	}
	if throwaway {
		a.deleteGroup(t, topic, group)
	}
	return nil
}

// throwawayInactive is how long NATS keeps a throwaway group's consumer
// that nothing pulls from: a tail killed before it deleted its group (or
// stopped, Ctrl-Z, for longer: it then reads on from where it was).
const throwawayInactive = 15 * time.Minute

// throwawayOptions are the subscribe options of a group the command makes
// for itself and deletes at the end (tail's, dlq's reader): should the
// command be killed first, NATS deletes the consumer once nothing pulls
// from it (Kafka expires an empty group's offsets by itself).
func throwawayOptions() []transport.SpecificOption {
	return []transport.SpecificOption{busnats.InactiveThreshold(throwawayInactive)}
}

// eventLine is an event in one line: time, type, key, id, short data.
func eventLine(m *transport.Message, env bus.Envelope) string {
	ts := "-"
	if !env.Time.IsZero() {
		ts = env.Time.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	return fmt.Sprintf("%s  %-20s  key=%-12s  id=%s  %s", ts, orDash(env.Type), orDash(env.Key), orDash(env.ID), shortData(m.Body, 80))
}

// orDash is s for a text line or table cell ("-" when empty), shown
// with printable (shown) characters only: an event's attributes come from
// whoever published it, and a control character (an ANSI escape, a tab
// that shifts a table's columns) must not reach the terminal as one.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return shown(s)
}

// shown is s with each character that is not graphic (a control
// character, a newline, a zero-width or bidirectional format character)
// written as its Go escape: "x\x1b[2J".
func shown(s string) string {
	if !strings.ContainsFunc(s, notShown) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if !notShown(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRuneToGraphic(r) // '\x1b'
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

func notShown(r rune) bool { return r != ' ' && !unicode.IsGraphic(r) }

// shortData is body on one line, cut to max runes; a body that is not
// text is shown by its size.
func shortData(body []byte, max int) string {
	if len(body) == 0 {
		return "(no data)"
	}
	if !utf8.Valid(body) {
		return fmt.Sprintf("(%d bytes of binary data)", len(body))
	}
	s := shown(strings.Join(strings.Fields(string(body)), " "))
	if utf8.RuneCountInString(s) > max {
		r := []rune(s)
		s = string(r[:max-1]) + "…"
	}
	return s
}

// jsonEvent is an event as a JSON line: the CloudEvents JSON format's
// attributes, plus where it was read and the other headers.
type jsonEvent struct {
	SpecVersion     string            `json:"specversion,omitempty"`
	ID              string            `json:"id"`
	Type            string            `json:"type,omitempty"`
	Source          string            `json:"source,omitempty"`
	Subject         string            `json:"subject,omitempty"`
	Time            *time.Time        `json:"time,omitempty"`
	DataContentType string            `json:"datacontenttype,omitempty"`
	DataSchema      string            `json:"dataschema,omitempty"`
	PartitionKey    string            `json:"partitionkey,omitempty"`
	Data            json.RawMessage   `json:"data,omitempty"`
	DataBase64      string            `json:"data_base64,omitempty"`
	Topic           string            `json:"topic,omitempty"`
	MessageID       string            `json:"messageid,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
}

func toJSONEvent(m *transport.Message, env bus.Envelope) jsonEvent {
	e := jsonEvent{
		SpecVersion: env.SpecVersion, ID: env.ID, Type: env.Type, Source: env.Source, Subject: env.Subject,
		DataContentType: env.ContentType, DataSchema: env.DataSchema, PartitionKey: env.Key,
		Topic: m.Topic, MessageID: m.ID,
	}
	if !env.Time.IsZero() {
		t := env.Time.UTC()
		e.Time = &t
	}
	switch {
	case len(m.Body) == 0:
	case json.Valid(m.Body):
		e.Data = json.RawMessage(m.Body)
	case utf8.Valid(m.Body):
		e.Data, _ = json.Marshal(string(m.Body))
	default:
		e.DataBase64 = base64.StdEncoding.EncodeToString(m.Body)
	}
	for k, v := range m.Header {
		if strings.HasPrefix(k, transport.HeaderPrefix) || k == transport.HeaderContentType {
			continue
		}
		if e.Headers == nil {
			e.Headers = make(map[string]string)
		}
		e.Headers[k] = v
	}
	return e
}

func writeJSONLine(a *app, m *transport.Message, env bus.Envelope) {
	b, err := json.Marshal(toJSONEvent(m, env))
	if err != nil { // unreachable: strings, valid raw JSON
		fmt.Fprintf(a.stderr, "busway: event %s: %v\n", env.ID, err)
		return
	}
	fmt.Fprintf(a.stdout, "%s\n", b)
}
