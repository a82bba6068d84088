package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/busway/busway"
	"github.com/busway/busway/transport"
)

// Exit codes (see the package doc).
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitBadURL      = 3
	exitUnavailable = 4
	exitAuth        = 5
	exitNoTopic     = 6
	exitIncomplete  = 7
)

// openFunc opens a transport; busway.Open, or a test's.
type openFunc func(ctx context.Context, rawURL string) (transport.Transport, error)

// app is one run of the tool: its output and how it opens transports.
type app struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	open   openFunc

	timeout time.Duration // --timeout: bound on connecting and each broker call
	secrets []string      // of the URL in use, scrubbed from what is printed
}

// run executes the command line args and returns the exit code. A nil open
// means busway.Open.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, open openFunc) int {
	if open == nil {
		open = busway.Open
	}
	a := &app{ctx: ctx, stdin: stdin, stdout: stdout, open: open}
	a.stderr = &scrubWriter{app: a, w: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	fmt.Fprintf(a.stderr, "busway: %s\n", a.scrub(strings.TrimPrefix(err.Error(), "busway: ")))
	if code == exitUsage {
		fmt.Fprintln(a.stderr, "Run 'busway --help' for usage.")
	}
	return code
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "busway",
		Short: "Tail, publish, list and replay busway events on any transport URL",
		Long: `busway shows the events that flow on a busway topic and repairs what failed,
on any transport URL busway.Open accepts:

  chan://                                    in-process (this process only)
  nats://host:4222?stream=BUSWAY             NATS JetStream
  nats://embedded?store_dir=/var/lib/nats    an embedded JetStream server on a store dir
  kafka://host1:9092,host2:9092              Kafka

Exit codes: 0 ok, 1 error, 2 usage, 3 bad URL or option, 4 broker unreachable,
5 credentials rejected, 6 topic not found, 7 replay incomplete.
Credentials in a URL are never printed.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", 10*time.Second, "bound on connecting to the broker and on each publish")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.tailCmd(), a.publishCmd(), a.dlqCmd())
	return root
}

// args checks the positional arguments: exactly the names given.
func args(names ...string) cobra.PositionalArgs {
	return func(_ *cobra.Command, got []string) error {
		if len(got) != len(names) {
			return usageError{fmt.Errorf("want %d arguments (%s), got %d", len(names), strings.Join(names, " "), len(got))}
		}
		return nil
	}
}

// connect opens rawURL, bounded by --timeout, remembering its secrets so
// that nothing printed shows them.
func (a *app) connect(ctx context.Context, rawURL string) (transport.Transport, error) {
	a.secrets = append(a.secrets, urlSecrets(rawURL)...)
	if a.timeout <= 0 {
		return nil, usageError{fmt.Errorf("--timeout %v is not positive", a.timeout)}
	}
	octx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	t, err := a.open(octx, rawURL)
	if err != nil {
		if ctx.Err() == nil && octx.Err() != nil {
			err = fmt.Errorf("%w: no answer within --timeout %v: %w", transport.ErrUnavailable, a.timeout, err)
		}
		if ue := (*transport.URLError)(nil); errors.As(err, &ue) {
			return nil, err // it names the URL already
		}
		return nil, fmt.Errorf("open %s: %w", transport.RedactRaw(rawURL), err)
	}
	if strings.HasPrefix(rawURL, "chan:") {
		fmt.Fprintln(a.stderr, "busway: note: chan:// is an in-process transport: this command sees only its own process")
	}
	return t, nil
}

// closeTransport closes t, reporting a failure on stderr.
func (a *app) closeTransport(t transport.Transport) {
	if err := t.Close(); err != nil {
		fmt.Fprintf(a.stderr, "busway: closing the transport: %v\n", err)
	}
}

// usageError is a command line the tool cannot run: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// incompleteError is a replay that did not do everything asked: exit 7.
type incompleteError struct{ msg string }

func (e incompleteError) Error() string { return e.msg }

func exitCode(err error) int {
	var ue usageError
	var ie incompleteError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ie):
		return exitIncomplete
	case errors.Is(err, transport.ErrAuthentication):
		return exitAuth
	case errors.Is(err, transport.ErrInvalidURL), errors.Is(err, transport.ErrUnknownScheme),
		errors.Is(err, transport.ErrInvalidOptions), errors.Is(err, transport.ErrInvalidTopic):
		return exitBadURL
	case errors.Is(err, transport.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return exitUnavailable
	case errors.Is(err, transport.ErrTopicNotFound):
		return exitNoTopic
	case strings.HasPrefix(err.Error(), "unknown command"), strings.HasPrefix(err.Error(), "unknown flag"):
		return exitUsage
	}
	return exitError
}

// urlSecrets returns the secrets rawURL holds, as they may appear in an
// error's text: its user information (password, or a user name standing
// alone, which NATS takes as a token) and the values of its secret query
// options (transport.SecretOption), each also escaped. The URL itself is
// printed through transport.RedactRaw; these scrub what a broker client
// may quote of it.
func urlSecrets(rawURL string) []string {
	var s []string
	add := func(v string) {
		if v != "" {
			s = append(s, v, url.QueryEscape(v), url.PathEscape(v))
		}
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// Unparsable: take whatever sits between "://" and the last '@'.
		if i := strings.Index(rawURL, "://"); i >= 0 {
			if at := strings.LastIndex(rawURL[i+3:], "@"); at >= 0 {
				info := rawURL[i+3 : i+3+at]
				add(info)
				if _, pw, ok := strings.Cut(info, ":"); ok {
					add(pw)
				}
			}
		}
		return s
	}
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			add(pw)
		} else {
			add(u.User.Username())
		}
	}
	for name, vs := range u.Query() {
		if transport.SecretOption(name) {
			for _, v := range vs {
				add(v)
			}
		}
	}
	return s
}

// scrub replaces the secrets of the URLs in use in s.
func (a *app) scrub(s string) string {
	for _, sec := range a.secrets {
		if len(sec) >= 3 { // shorter "secrets" would mangle ordinary text
			s = strings.ReplaceAll(s, sec, "xxxxx")
		}
	}
	return s
}

// scrubWriter scrubs secrets from each write (the tool writes a line at a
// time).
type scrubWriter struct {
	mu  sync.Mutex
	app *app
	w   io.Writer
}

func (w *scrubWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := io.WriteString(w.w, w.app.scrub(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// randomSuffix returns 8 random hex digits for throwaway group names.
func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// deleteGroup removes a throwaway group where the transport keeps groups.
func (a *app) deleteGroup(t transport.Transport, topic, group string) {
	d, ok := t.(transport.GroupDeleter)
	if !ok {
		return // the group ended with its subscription
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.timeout)
	defer cancel()
	if err := d.DeleteGroup(ctx, topic, group); err != nil {
		fmt.Fprintf(a.stderr, "busway: warning: could not delete the throwaway group %q of topic %q: %v\n", group, topic, err)
	}
}
