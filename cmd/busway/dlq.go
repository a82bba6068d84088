package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
)

// Headers of a replay marker (see the package doc).
const (
	headerReplayed   = "busway-replayed"    // the dead letter's Message.ID
	headerReplayedAs = "busway-replayed-as" // the replay's Message.ID
	headerReplayedAt = "busway-replayed-at" // RFC 3339, UTC
	headerReplayOf   = "busway-replay-of"   // on the replay: the dead letter's Message.ID
)

// dlqHeaders are the headers DeadLetter adds, removed from a replay.
var dlqHeaders = []string{
	middleware.HeaderDLQError, middleware.HeaderDLQAttempts, middleware.HeaderDLQDelivery, middleware.HeaderDLQGroup,
	middleware.HeaderDLQTopic, middleware.HeaderDLQTime, middleware.HeaderDLQPermanent, middleware.HeaderDLQID,
}

// stripDLQHeaders removes the dead-letter headers: the middleware's
// constants, and any other of its "busway-dlq-" family.
func stripDLQHeaders(h map[string]string) {
	for _, k := range dlqHeaders {
		delete(h, k)
	}
	for k := range h {
		if strings.HasPrefix(k, "busway-dlq-") {
			delete(h, k)
		}
	}
}

type dlqFlags struct {
	dlqTopic string
	group    string
	wait     time.Duration
}

func (f *dlqFlags) add(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.dlqTopic, "dlq-topic", "", `the dead-letter topic (default "<TOPIC>.dlq", middleware.DLQTopic)`)
	fs.StringVar(&f.group, "group", "", "only the dead letters of this consumer group")
	fs.DurationVar(&f.wait, "wait", 3*time.Second, "stop reading the dead-letter topic after no message came for this long")
}

func (a *app) dlqCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List and replay dead letters",
		Long: `The dead letters of TOPIC are the messages middleware.DeadLetter parked on
"<TOPIC>.dlq" after their handler failed for good. list shows them; replay
sends them back to TOPIC with their original event ID.

Both read the whole dead-letter topic in a throwaway group, from the earliest
message until none came for --wait, and delete that group afterwards: nothing
is consumed for good, no service's group is touched. A replayed dead letter is
marked by a replay marker on the dead-letter topic (published only after the
replay's publish succeeded), and is not listed or replayed again.`,
		Args: args(),
	}
	cmd.AddCommand(a.dlqListCmd(), a.dlqReplayCmd())
	return cmd
}

func (a *app) dlqListCmd() *cobra.Command {
	var (
		f      dlqFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list URL TOPIC",
		Short: "Show the dead letters of a topic that were not replayed",
		Long: `list shows the dead letters of TOPIC that were not replayed yet, oldest first,
as a table (event id, type, key, group, attempts, reason, failed at) or as
JSON lines with --json (with the whole error, the dead letter's message id to
pass to replay --id, and the data). It consumes nothing.`,
		Example: `  busway dlq list nats://127.0.0.1:4222 orders
  busway dlq list kafka://localhost:9092 orders --group billing --json`,
		Args: args("URL", "TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if f.dlqTopic == "" {
				f.dlqTopic = middleware.DLQTopic(argv[1])
			}
			letters, err := a.readDLQ(cmd.Context(), argv[0], argv[1], f)
			if err != nil {
				return err
			}
			if asJSON {
				for _, d := range letters {
					b, _ := json.Marshal(d.jsonLine())
					fmt.Fprintf(a.stdout, "%s\n", b)
				}
			} else {
				a.table(letters)
			}
			fmt.Fprintf(a.stderr, "busway: %d dead letter(s) on %q\n", len(letters), f.dlqTopic)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per dead letter")
	return cmd
}

func (a *app) dlqReplayCmd() *cobra.Command {
	var (
		f          dlqFlags
		ids        []string
		all, dry   bool
		noProgress bool
	)
	cmd := &cobra.Command{
		Use:   "replay URL TOPIC (--id ID ... | --all)",
		Short: "Republish dead letters to their original topic",
		Long: `replay republishes the dead letters selected (--id: an event id or a dead
letter's message id, repeatable; --all: every one not replayed yet) to their
original topic, without the dead-letter headers, with their original event ID
(ce_id: consumers with middleware.Idempotent skip an event they handled) and a
new message ID (a replay is a new publish; NATS would drop a re-used one as a
duplicate). Dead letters of one event (failed by several groups) are sent once.
Each is marked replayed only after its publish succeeded. --dry-run shows what
would be sent and changes nothing. A summary ends the output; exit code 7 says
not everything asked for was replayed.`,
		Example: `  busway dlq replay nats://127.0.0.1:4222 orders --all --dry-run
  busway dlq replay nats://127.0.0.1:4222 orders --id 0192f5c8-7c1e-7b3a-9d7e-3f1c2a4b5c6d`,
		Args: args("URL", "TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if all == (len(ids) > 0) {
				return usageError{fmt.Errorf("give either --id (one or more) or --all")}
			}
			return a.replay(cmd.Context(), argv[0], argv[1], f, ids, dry, !noProgress)
		},
	}
	f.add(cmd)
	fs := cmd.Flags()
	fs.StringSliceVar(&ids, "id", nil, "replay this dead letter: its event id or message id (repeatable)")
	fs.BoolVar(&all, "all", false, "replay every dead letter not replayed yet")
	fs.BoolVar(&dry, "dry-run", false, "show what would be replayed; publish nothing")
	fs.BoolVar(&noProgress, "no-progress", false, "no progress bar (it is shown on a terminal for more than 10 events)")
	return cmd
}

// deadLetter is one message of the dead-letter topic.
type deadLetter struct {
	msg      *transport.Message
	env      bus.Envelope
	topic    string // the original topic
	failedAt time.Time
}

func (d *deadLetter) group() string  { return d.msg.Header[middleware.HeaderDLQGroup] }
func (d *deadLetter) reason() string { return d.msg.Header[middleware.HeaderDLQError] }
func (d *deadLetter) attempts() string {
	at := d.msg.Header[middleware.HeaderDLQAttempts]
	if dv := d.msg.Header[middleware.HeaderDLQDelivery]; dv != "" && dv != "1" {
		at += " (delivery " + dv + ")"
	}
	return orDash(at)
}

type dlqLine struct {
	jsonEvent
	Group     string     `json:"group,omitempty"`
	Attempts  string     `json:"attempts,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	Permanent bool       `json:"permanent,omitempty"`
	FailedAt  *time.Time `json:"failedat,omitempty"`
	Original  string     `json:"originaltopic,omitempty"`
}

func (d *deadLetter) jsonLine() dlqLine {
	l := dlqLine{jsonEvent: toJSONEvent(d.msg, d.env), Group: d.group(), Attempts: d.msg.Header[middleware.HeaderDLQAttempts],
		Reason: d.reason(), Permanent: d.msg.Header[middleware.HeaderDLQPermanent] == "true", Original: d.topic}
	stripDLQHeaders(l.Headers)
	if len(l.Headers) == 0 {
		l.Headers = nil
	}
	if !d.failedAt.IsZero() {
		l.FailedAt = &d.failedAt
	}
	return l
}

func (a *app) table(letters []*deadLetter) {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tKEY\tGROUP\tATTEMPTS\tREASON\tFAILED AT")
	for _, d := range letters {
		at := "-"
		if !d.failedAt.IsZero() {
			at = d.failedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(d.env.ID), orDash(d.env.Type), orDash(d.env.Key),
			orDash(d.group()), d.attempts(), orDash(shortData([]byte(d.reason()), 60)), at)
	}
	tw.Flush()
}

// readDLQ reads the whole dead-letter topic of topic in a throwaway group
// (deleted afterwards) and returns the dead letters without a replay
// marker, oldest first, of f.group when set.
func (a *app) readDLQ(ctx context.Context, rawURL, topic string, f dlqFlags) ([]*deadLetter, error) {
	t, err := a.connect(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	defer a.closeTransport(t)
	return a.readDLQWith(ctx, t, topic, &f)
}

func (a *app) readDLQWith(ctx context.Context, t transport.Transport, topic string, f *dlqFlags) ([]*deadLetter, error) {
	if f.wait <= 0 {
		return nil, usageError{fmt.Errorf("--wait %v is not positive", f.wait)}
	}
	if f.dlqTopic == "" {
		f.dlqTopic = middleware.DLQTopic(topic)
	}
	var (
		mu       sync.Mutex
		msgs     []*transport.Message
		replayed = make(map[string]bool)
		seen     = make(map[string]bool) // Message.IDs: at-least-once may deliver one twice
	)
	activity := make(chan struct{}, 1) // a pending "a message came"; more say nothing new
	h := func(_ context.Context, m *transport.Message) error {
		mu.Lock()
		if id := m.Header[headerReplayed]; id != "" {
			replayed[id] = true
		} else if !seen[m.ID] || m.ID == "" {
			seen[m.ID] = true
			msgs = append(msgs, m.Clone())
		}
		mu.Unlock()
		select {
		case activity <- struct{}{}:
		default:
		}
		return nil
	}
	group := "busway-dlq-" + randomSuffix()
	sctx, cancel := context.WithTimeout(ctx, a.timeout)
	sub, err := t.Subscribe(sctx, f.dlqTopic, h, transport.SubscribeOptions{Group: group, StartFrom: transport.StartEarliest, Specific: throwawayOptions()})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("read dead-letter topic %q: %w", f.dlqTopic, err)
	}
	idle := time.NewTimer(f.wait)
	for waiting := true; waiting; {
		select {
		case <-activity:
			idle.Reset(f.wait)
		case <-idle.C:
			waiting = false
		case <-ctx.Done():
			waiting = false
		}
	}
	idle.Stop()
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	defer ccancel()
	if err := sub.Close(cctx); err != nil {
		fmt.Fprintf(a.stderr, "busway: closing the dead-letter reader: %v\n", err)
	}
	a.deleteGroup(t, f.dlqTopic, group)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	var out []*deadLetter
	for _, m := range msgs {
		if replayed[m.ID] {
			continue
		}
		if f.group != "" && m.Header[middleware.HeaderDLQGroup] != f.group {
			continue
		}
		env, _ := bus.DecodeEnvelope(m) // what decodes; a bad ce_time only loses the time
		d := &deadLetter{msg: m, env: env, topic: m.Header[middleware.HeaderDLQTopic]}
		if d.topic == "" {
			d.topic = topic
		}
		if ts := m.Header[middleware.HeaderDLQTime]; ts != "" {
			d.failedAt, _ = time.Parse(time.RFC3339Nano, ts)
		}
		if d.failedAt.IsZero() {
			d.failedAt = m.Time
		}
		out = append(out, d)
	}
	slices.SortStableFunc(out, func(x, y *deadLetter) int { return x.failedAt.Compare(y.failedAt) })
	return out, nil
}

// replayEvent is one event to replay and the dead letters it clears.
type replayEvent struct {
	letters []*deadLetter // of one (original topic, event ID), oldest first
}

func (r *replayEvent) last() *deadLetter { return r.letters[len(r.letters)-1] }

func (a *app) replay(ctx context.Context, rawURL, topic string, f dlqFlags, ids []string, dry, progress bool) error {
	t, err := a.connect(ctx, rawURL)
	if err != nil {
		return err
	}
	defer a.closeTransport(t)
	letters, err := a.readDLQWith(ctx, t, topic, &f)
	if err != nil {
		return err
	}
	// Select, and group by event.
	wanted := make(map[string]bool, len(ids))
	for _, id := range ids {
		wanted[id] = true
	}
	found := make(map[string]bool)
	var events []*replayEvent
	byEvent := make(map[[2]string]*replayEvent)
	for _, d := range letters {
		if len(ids) > 0 {
			switch {
			case wanted[d.msg.ID]:
				found[d.msg.ID] = true
			case wanted[d.env.ID]:
				found[d.env.ID] = true
			default:
				continue
			}
		}
		k := [2]string{d.topic, d.env.ID}
		if d.env.ID == "" {
			k[1] = "message:" + d.msg.ID
		}
		ev := byEvent[k]
		if ev == nil {
			ev = &replayEvent{}
			byEvent[k] = ev
			events = append(events, ev)
		}
		ev.letters = append(ev.letters, d)
	}
	var missing []string
	for _, id := range ids {
		if !found[id] {
			missing = append(missing, id)
		}
	}
	nLetters := 0
	for _, ev := range events {
		nLetters += len(ev.letters)
	}

	if dry {
		for _, ev := range events {
			d := ev.last()
			fmt.Fprintf(a.stdout, "would replay event %s (%s, key %s) to %q, clearing %d dead letter(s)\n",
				orDash(d.env.ID), orDash(d.env.Type), orDash(d.env.Key), d.topic, len(ev.letters))
		}
		fmt.Fprintf(a.stdout, "dry run: would replay %d event(s) (%d dead letter(s)) of %q; nothing was published\n", len(events), nLetters, f.dlqTopic)
		return missingError(missing, 0, 0)
	}

	var bar *progressbar.ProgressBar
	if progress && len(events) > 10 && isTerminal(a) {
		bar = progressbar.NewOptions(len(events), progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription("replaying"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond))
	}
	var replayedN, failedN, unmarkedN int
	for _, ev := range events {
		if ctx.Err() != nil {
			break
		}
		d := ev.last()
		newID, perr := a.republish(ctx, t, d)
		if perr != nil {
			failedN++
			fmt.Fprintf(a.stderr, "busway: replay of event %s failed (its dead letter stays): %v\n", orDash(d.env.ID), perr)
		} else {
			replayedN++
			if err := a.markReplayed(ctx, t, f.dlqTopic, ev, newID); err != nil {
				unmarkedN++
				fmt.Fprintf(a.stderr, "busway: event %s was replayed but its dead letter could not be marked (a later replay sends it again): %v\n", d.env.ID, err)
			}
			if bar == nil {
				fmt.Fprintf(a.stdout, "replayed event %s (%s, key %s) to %q as message %s\n", orDash(d.env.ID), orDash(d.env.Type), orDash(d.env.Key), d.topic, newID)
			}
		}
		if bar != nil {
			_ = bar.Add(1)
		}
	}
	if bar != nil {
		_ = bar.Finish()
	}
	skipped := len(events) - replayedN - failedN
	fmt.Fprintf(a.stdout, "replayed %d of %d event(s) (%d dead letter(s)) of %q: %d failed, %d not attempted (interrupted), %d not marked\n",
		replayedN, len(events), nLetters, f.dlqTopic, failedN, skipped, unmarkedN)
	if err := ctx.Err(); err != nil {
		return err
	}
	return missingError(missing, failedN, unmarkedN)
}

func missingError(missing []string, failed, unmarked int) error {
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, fmt.Sprintf("%d --id not found among the dead letters not replayed yet: %s", len(missing), strings.Join(missing, ", ")))
	}
	if failed > 0 {
		parts = append(parts, strconv.Itoa(failed)+" replay(s) failed")
	}
	if unmarked > 0 {
		parts = append(parts, strconv.Itoa(unmarked)+" replayed dead letter(s) not marked")
	}
	if len(parts) == 0 {
		return nil
	}
	return incompleteError{strings.Join(parts, "; ")}
}

// republish sends d's event to its original topic: the dead letter without
// the dead-letter headers, the same event ID (ce_id), a new Message.ID.
func (a *app) republish(ctx context.Context, t transport.Transport, d *deadLetter) (string, error) {
	m := d.msg.Clone()
	stripDLQHeaders(m.Header)
	id, err := uuid.NewV7()
	if err != nil {
		return "", err
	}
	if m.Header == nil {
		m.Header = make(map[string]string)
	}
	if m.Header[transport.HeaderID] == "" && m.ID != "" {
		m.Header[transport.HeaderID] = m.ID // keep the event's identity
	}
	m.Header[headerReplayOf] = d.msg.ID
	m.ID = id.String()
	m.Topic, m.Group, m.Time, m.Attempt, m.Meta = "", "", time.Time{}, 0, nil
	pctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	if err := t.Publish(pctx, d.topic, m); err != nil {
		return "", err
	}
	return m.ID, nil
}

// markReplayed publishes a replay marker for each dead letter of ev.
func (a *app) markReplayed(ctx context.Context, t transport.Transport, dlqTopic string, ev *replayEvent, newID string) error {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	marks := make([]*transport.Message, 0, len(ev.letters))
	for _, d := range ev.letters {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		marks = append(marks, &transport.Message{ID: id.String(), Key: d.msg.Key, Header: map[string]string{
			headerReplayed: d.msg.ID, headerReplayedAs: newID, headerReplayedAt: now,
		}})
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	defer cancel()
	return t.Publish(pctx, dlqTopic, marks...)
}

// isTerminal reports whether the tool's stderr is the process's, on a
// terminal.
func isTerminal(a *app) bool {
	sw, ok := a.stderr.(*scrubWriter)
	if !ok || sw.w != os.Stderr {
		return false
	}
	fi, err := os.Stderr.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
