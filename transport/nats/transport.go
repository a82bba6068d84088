package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/internal/tlsfiles"
	"github.com/busway/busway/transport"
)

// Scheme is the URL scheme of this transport ("nats://...").
const Scheme = "nats"

// Wire header names.
const (
	headerMsgID   = "Nats-Msg-Id"
	wirePrefix    = "ce-"
	wireKeyHeader = "ce-partitionkey"
)

var _ transport.Transport = (*Transport)(nil)

// Transport is a NATS JetStream transport. Create it with New or through
// Opener; it is safe for concurrent use.
type Transport struct {
	s   *settings
	srv *server.Server // the embedded server, or nil
	nc  *natsgo.Conn
	js  jetstream.JetStream
	pub pubInbox // the replies to Publish's batches
	log *slog.Logger

	// maxMsgSize is the stream's MaxMsgSize when New ran (<= 0: none).
	maxMsgSize atomic.Int32

	closer transport.CloseOnce
	mu     sync.Mutex
	subs   map[*subscription]struct{}
}

// New connects to the servers of cfg (or starts the embedded server),
// provisions or binds the stream and returns the transport. A config
// error wraps transport.ErrInvalidOptions; an unreachable server
// transport.ErrUnavailable; rejected credentials
// transport.ErrAuthentication; a missing stream in bind mode
// transport.ErrTopicNotFound.
func New(ctx context.Context, cfg Config) (*Transport, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	t := &Transport{s: s, log: s.Logger, subs: make(map[*subscription]struct{})}
	if s.Embedded != nil {
		t.srv, err = startEmbedded(ctx, s.Embedded, s.Logger)
		if err != nil {
			return nil, err
		}
	}
	if err := t.connect(); err != nil {
		t.release()
		return nil, err
	}
	if err := t.provision(ctx); err != nil {
		t.release()
		return nil, err
	}
	return t, nil
}

func (t *Transport) connect() error {
	s := t.s
	opts := []natsgo.Option{
		natsgo.Name(s.Name),
		natsgo.Timeout(s.ConnectTimeout),
		// Reconnect forever: a server restart or a rolling upgrade must not
		// end the transport. Publish still reports an error for messages
		// whose ack did not arrive, so nothing that returned nil is lost.
		natsgo.MaxReconnects(-1),
		natsgo.ReconnectWait(500 * time.Millisecond),
		natsgo.DisconnectErrHandler(func(nc *natsgo.Conn, err error) {
			t.log.Warn("nats: disconnected", "error", err)
			// The replies to batch messages sent on the lost connection
			// may be lost with it.
			if nc.IsClosed() {
				t.failSent(natsgo.ErrConnectionClosed)
			} else {
				t.failSent(natsgo.ErrDisconnected)
			}
		}),
		natsgo.ReconnectHandler(func(nc *natsgo.Conn) {
			t.log.Info("nats: reconnected", "server", nc.ConnectedUrlRedacted())
			// The pull requests of the old connection are gone (or will
			// expire): every subscription asks again at once.
			t.mu.Lock()
			for s := range t.subs {
				s.pull.resetPulls()
			}
			t.mu.Unlock()
		}),
		natsgo.ErrorHandler(func(_ *natsgo.Conn, sub *natsgo.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			t.log.Warn("nats: asynchronous error", "subject", subj, "error", err)
		}),
	}
	if t.srv != nil {
		opts = append(opts, natsgo.InProcessServer(t.srv))
	}
	if s.User != "" {
		opts = append(opts, natsgo.UserInfo(s.User, s.Password))
	}
	if s.Token != "" {
		opts = append(opts, natsgo.Token(s.Token))
	}
	if s.CredsFile != "" {
		opts = append(opts, natsgo.UserCredentials(s.CredsFile))
	}
	if s.NKeySeedFile != "" {
		o, err := natsgo.NkeyOptionFromSeed(s.NKeySeedFile)
		if err != nil {
			return fmt.Errorf("%w: nats: NKeySeedFile %q: %v", transport.ErrInvalidOptions, s.NKeySeedFile, err)
		}
		opts = append(opts, o)
	}
	if s.TLS != nil {
		opts = append(opts, natsgo.Secure(s.TLS))
	}
	servers := strings.Join(s.Servers, ",")
	if t.srv != nil {
		servers = t.srv.ClientURL()
	}
	nc, err := natsgo.Connect(servers, opts...)
	if err != nil {
		return connectError(redactServers(s.Servers, t.srv), err)
	}
	t.nc = nc
	t.js, err = jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("%w: nats: jetstream: %v", transport.ErrUnavailable, err)
	}
	return nil
}

func redactServers(servers []string, srv *server.Server) string {
	if srv != nil {
		return "embedded server"
	}
	out := make([]string, len(servers))
	for i, s := range servers {
		out[i] = s
		out[i] = transport.RedactRaw(s) // a password, or a token as the user name
	}
	return strings.Join(out, ",")
}

// connectError classifies an error of natsgo.Connect.
func connectError(servers string, err error) error {
	switch {
	case errors.Is(err, natsgo.ErrAuthorization), errors.Is(err, natsgo.ErrAuthExpired),
		errors.Is(err, natsgo.ErrAuthRevoked), errors.Is(err, natsgo.ErrAccountAuthExpired),
		strings.Contains(strings.ToLower(err.Error()), "authorization violation"):
		return fmt.Errorf("%w: nats: %s rejected the credentials: %v", transport.ErrAuthentication, servers, err)
	case tlsfiles.VerifyFailed(err):
		return fmt.Errorf("%w: nats: %s: the server's certificate is not trusted (Config.TLS, URL option tls_ca): %v", transport.ErrAuthentication, servers, err)
	case errors.Is(err, natsgo.ErrBadSubject):
		return fmt.Errorf("%w: nats: %v", transport.ErrInvalidOptions, err)
	}
	var ue *url.Error
	if errors.As(err, &ue) && ue.Op == "parse" {
		return fmt.Errorf("%w: nats: server URL: %v", transport.ErrInvalidOptions, err)
	}
	return fmt.Errorf("%w: nats: cannot connect to %s: %v", transport.ErrUnavailable, servers, err)
}

// provision creates, updates or binds the stream.
func (t *Transport) provision(ctx context.Context) error {
	s := t.s
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	subject := s.subjectBase + ">"
	st, err := t.js.Stream(ctx, s.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if s.Provision == ProvisionBind {
			return fmt.Errorf("%w: nats: stream %q does not exist (Provision is bind: create it with subjects %q, or use ProvisionCreate)",
				transport.ErrTopicNotFound, s.Stream, subject)
		}
		_, err = t.js.CreateStream(ctx, t.streamConfig([]string{subject}))
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another process created it in the meantime: go on as if
			// it had existed.
			return t.provision(ctx)
		}
		if err != nil {
			return t.apiError("create stream "+s.Stream, t.overlapError(ctx, subject, err))
		}
		return nil
	case err != nil:
		return t.apiError("look up stream "+s.Stream, err)
	}
	cur := st.CachedInfo().Config
	t.maxMsgSize.Store(cur.MaxMsgSize)
	if err := checkRetention(cur); err != nil {
		return err
	}
	covered := false
	for _, p := range cur.Subjects {
		if subjectCovers(p, subject) {
			covered = true
			break
		}
	}
	if s.Provision == ProvisionBind {
		if !covered {
			return fmt.Errorf("%w: nats: stream %q holds subjects %q, not %q (Provision is bind: add the subject to the stream or change SubjectPrefix)",
				transport.ErrTopicNotFound, s.Stream, cur.Subjects, subject)
		}
		return nil
	}
	// The stream exists: its settings are the operator's (or an earlier
	// busway's) and stay as they are. Only the subjects busway needs are
	// added; what differs from Config is logged, never applied, so that
	// starting a service cannot weaken a limit someone set on purpose.
	t.logDifferences(cur)
	if covered {
		return nil
	}
	upd := cur
	upd.Subjects = append(append([]string(nil), cur.Subjects...), subject)
	if _, err := t.js.UpdateStream(ctx, upd); err != nil {
		return t.apiError("add subject "+subject+" to stream "+s.Stream, err)
	}
	t.log.Info("nats: added the subject to the existing stream", "stream", s.Stream, "subject", subject)
	return nil
}

// checkRetention refuses a stream whose retention policy removes messages
// that busway's groups still need: with work-queue retention a message is
// gone once one consumer acked it (and the server allows one consumer per
// subject), with interest retention once the consumers that exist at the
// time acked it, so a group that subscribes later, or a message published
// while no member runs, would be lost.
func checkRetention(cfg jetstream.StreamConfig) error {
	if cfg.Retention == jetstream.LimitsPolicy {
		return nil
	}
	return fmt.Errorf("%w: nats: stream %q has %s retention, which removes messages before every group has them (busway needs limits retention: every group gets every message, also groups that subscribe later); use a stream with limits retention (Config.Stream names another stream)",
		transport.ErrInvalidOptions, cfg.Name, retentionName(cfg.Retention))
}

func retentionName(r jetstream.RetentionPolicy) string {
	switch r {
	case jetstream.LimitsPolicy:
		return "limits"
	case jetstream.InterestPolicy:
		return "interest"
	case jetstream.WorkQueuePolicy:
		return "work-queue"
	}
	return r.String()
}

// logDifferences logs the settings of an existing stream that differ from
// those Config would give a stream it creates; they are kept.
func (t *Transport) logDifferences(cur jetstream.StreamConfig) {
	want := t.streamConfig(cur.Subjects)
	var attrs []any
	diff := func(name string, have, config any) {
		attrs = append(attrs, slog.Group(name, "stream", have, "config", config))
	}
	if cur.Storage != want.Storage {
		diff("storage", cur.Storage.String(), want.Storage.String())
	}
	if cur.Replicas != want.Replicas {
		diff("replicas", cur.Replicas, want.Replicas)
	}
	if cur.MaxAge != want.MaxAge {
		diff("max_age", cur.MaxAge.String(), want.MaxAge.String())
	}
	if cur.Duplicates != want.Duplicates {
		diff("duplicates", cur.Duplicates.String(), want.Duplicates.String())
	}
	if cur.MaxBytes > 0 {
		diff("max_bytes", cur.MaxBytes, "unlimited")
	}
	if cur.MaxMsgs > 0 {
		diff("max_msgs", cur.MaxMsgs, "unlimited")
	}
	if cur.MaxMsgsPerSubject > 0 {
		diff("max_msgs_per_subject", cur.MaxMsgsPerSubject, "unlimited")
	}
	if cur.Discard != jetstream.DiscardOld {
		diff("discard", cur.Discard.String(), jetstream.DiscardOld.String())
	}
	if len(attrs) == 0 {
		return
	}
	t.log.Warn("nats: the stream exists with settings that differ from Config; they are kept (busway does not change an existing stream: change it on the server, or use a new Stream name)",
		append([]any{"stream", cur.Name}, attrs...)...)
}

func (t *Transport) streamConfig(subjects []string) jetstream.StreamConfig {
	s := t.s
	cfg := jetstream.StreamConfig{
		Name:       s.Stream,
		Subjects:   subjects,
		Storage:    jetstream.FileStorage,
		Replicas:   s.Replicas,
		MaxAge:     s.MaxAge,
		Duplicates: s.Duplicates,
		Retention:  jetstream.LimitsPolicy,
	}
	if s.Storage == StorageMemory {
		cfg.Storage = jetstream.MemoryStorage
	}
	return cfg
}

// subjectCovers reports whether the stream subject pattern p matches every
// subject that subj (which may end in ">") matches.
func subjectCovers(p, subj string) bool {
	pt, st := strings.Split(p, "."), strings.Split(subj, ".")
	for i, tok := range pt {
		if tok == ">" {
			return i < len(st)
		}
		if i >= len(st) {
			return false
		}
		switch {
		case st[i] == ">":
			return false
		case tok == "*", tok == st[i]:
		default:
			return false
		}
	}
	return len(pt) == len(st)
}

// apiError classifies an error of a JetStream API call.
func (t *Transport) apiError(what string, err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w: nats: %s: JetStream is not enabled on the server or account: %v", transport.ErrUnavailable, what, err)
	case errors.Is(err, natsgo.ErrConnectionClosed):
		return fmt.Errorf("%w: nats: %s: %v", transport.ErrClosed, what, err)
	case errors.Is(err, natsgo.ErrTimeout), errors.Is(err, natsgo.ErrNoResponders), errors.Is(err, natsgo.ErrDisconnected),
		errors.Is(err, natsgo.ErrConnectionReconnecting), errors.Is(err, jetstream.ErrNoStreamResponse):
		return fmt.Errorf("%w: nats: %s: %v", transport.ErrUnavailable, what, err)
	case errors.As(err, &apiErr) && apiErr.Code == 400:
		return fmt.Errorf("%w: nats: %s: %v", transport.ErrInvalidOptions, what, err)
	}
	return fmt.Errorf("nats: %s: %w", what, err)
}

// jsErrSubjectOverlap is JetStream's error code for a stream whose subjects
// overlap another stream's.
const jsErrSubjectOverlap jetstream.ErrorCode = 10065

// overlapError is err, from creating the stream for subject (a JetStream
// API error, kept as it was), with the name of the stream that holds
// subject already when that is why it failed: a
// subject belongs to one stream, so the fix is to name that stream (bind to
// it) or to choose another subject prefix.
func (t *Transport) overlapError(ctx context.Context, subject string, err error) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jsErrSubjectOverlap {
		return err
	}
	other, lerr := t.js.StreamNameBySubject(ctx, subject)
	if lerr != nil || other == "" {
		return fmt.Errorf("%w (Stream names an existing stream; SubjectPrefix gives this one other subjects)", err)
	}
	return fmt.Errorf("%w: stream %q holds subject %q already (Stream %q uses it; another SubjectPrefix gives this stream other subjects)", err, other, subject, other)
}

// withTimeout bounds ctx by PublishTimeout when it has no deadline.
func (t *Transport) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, t.s.PublishTimeout)
}

// Conn returns the underlying NATS connection, for what this package does
// not cover. Do not close it; Close does.
func (t *Transport) Conn() *natsgo.Conn { return t.nc }

// JetStream returns the JetStream context the transport uses.
func (t *Transport) JetStream() jetstream.JetStream { return t.js }

// Stream returns the name of the stream that holds the topics.
func (t *Transport) Stream() string { return t.s.Stream }

// Subject returns the NATS subject of topic.
func (t *Transport) Subject(topic string) string { return t.s.subjectBase + topic }

// EmbeddedURL returns the client URL of the embedded server ("" when the
// transport has none, or it does not listen), for other processes or the
// nats CLI.
func (t *Transport) EmbeddedURL() string {
	if t.srv == nil || t.s.Embedded.NoListen {
		return ""
	}
	return t.srv.ClientURL()
}

// Close closes every open subscription (draining each for at most AckWait;
// messages whose handler did not finish are redelivered later), flushes and
// closes the connection, then shuts the embedded server down. Publish and
// Subscribe after Close return transport.ErrClosed. Idempotent; concurrent
// calls wait for the first.
func (t *Transport) Close() error { return t.closer.Do(t.close) }

func (t *Transport) close() error {
	t.mu.Lock()
	subs := slices.Collect(maps.Keys(t.subs))
	t.mu.Unlock()
	// Together, so that one slow handler does not hold up the others' drain.
	err := transport.CloseSubscriptions(subs, t.s.AckWait, func(s *subscription) string {
		return fmt.Sprintf("nats: close subscription to %q (group %q)", s.topic, s.group)
	})
	if t.nc.IsConnected() {
		if err := t.nc.FlushTimeout(t.s.ConnectTimeout); err != nil && !errors.Is(err, natsgo.ErrConnectionClosed) {
			t.log.Warn("nats: flush on close", "error", err)
		}
	}
	t.release()
	return err
}

// release closes the connection and stops the embedded server.
func (t *Transport) release() {
	if t.nc != nil {
		closed := make(chan struct{})
		t.nc.SetClosedHandler(func(*natsgo.Conn) { close(closed) })
		t.nc.Close()
		// The closed handler runs on the connection's callback goroutine;
		// waiting for it means that goroutine has done its work.
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
		}
	}
	if t.srv != nil {
		stopServer(t.srv)
	}
}

func (t *Transport) errClosed(op string) error {
	return fmt.Errorf("%w: nats: %s after Close", transport.ErrClosed, op)
}
