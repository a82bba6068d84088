package nats

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/busway/busway/transport"
)

// Provision says whether the transport may create or update its stream.
type Provision int

const (
	// ProvisionCreate creates the stream with Config's stream settings
	// when it is missing. When it exists, its settings (limits, storage,
	// replicas, duplicate window) are kept as they are: New only adds the
	// transport's subjects when the stream lacks them, and logs (at Warn)
	// the settings that differ from Config. The default.
	ProvisionCreate Provision = iota
	// ProvisionBind uses an existing stream as it is (managed by an operator
	// or by infrastructure code); New fails with an error wrapping
	// transport.ErrTopicNotFound that names the stream when it is missing.
	//
	// In both modes New refuses (transport.ErrInvalidOptions) an existing
	// stream with work-queue or interest retention: it removes messages
	// before every group has them.
	ProvisionBind
)

func (p Provision) String() string {
	switch p {
	case ProvisionCreate:
		return "create"
	case ProvisionBind:
		return "bind"
	}
	return fmt.Sprintf("Provision(%d)", int(p))
}

// Storage is where a stream the transport creates keeps its messages.
type Storage int

const (
	// StorageFile keeps messages on disk: they survive a server restart.
	// The default.
	StorageFile Storage = iota
	// StorageMemory keeps messages in memory: faster, lost on restart.
	StorageMemory
)

func (s Storage) String() string {
	switch s {
	case StorageFile:
		return "file"
	case StorageMemory:
		return "memory"
	}
	return fmt.Sprintf("Storage(%d)", int(s))
}

// Defaults of Config, exported so callers can show or reuse them.
const (
	DefaultURL            = "nats://127.0.0.1:4222"
	DefaultStream         = "BUSWAY"
	DefaultSubjectPrefix  = "busway"
	DefaultConnectionName = "busway"
	DefaultConnectTimeout = 2 * time.Second
	DefaultPublishTimeout = 5 * time.Second
	DefaultAckWait        = 30 * time.Second
	DefaultDuplicates     = 2 * time.Minute
)

// DefaultNakDelays is the redelivery delay after the 1st, 2nd, ... handler
// error of a message; the last entry repeats.
var DefaultNakDelays = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second, 5 * time.Second}

// Config configures a Transport. Its zero value connects to DefaultURL and
// uses the stream "BUSWAY" with subjects "busway.>".
type Config struct {
	// Servers are the NATS server URLs ("nats://host:4222", "tls://...").
	// Default: DefaultURL, or the embedded server when Embedded is set (then
	// Servers must be empty).
	Servers []string
	// User and Password authenticate with a user name and password.
	// Default: none.
	User, Password string
	// Token authenticates with a token. Default: none.
	Token string
	// CredsFile is the path of a .creds file (user JWT and NKey seed), the
	// way to authenticate with an operator-mode (decentralised) server.
	// Default: none.
	CredsFile string
	// NKeySeedFile is the path of a file holding an NKey user seed.
	// Default: none.
	NKeySeedFile string
	// TLS, when non-nil, is used for the connection (server verification,
	// client certificates). Default: nil, TLS only when a server URL says
	// "tls://" or the server requires it.
	TLS *tls.Config
	// Name is the connection name the server shows in its monitoring.
	// Default "busway".
	Name string
	// ConnectTimeout bounds dialling one server. Default 2s.
	ConnectTimeout time.Duration

	// Stream is the JetStream stream that holds every topic. Default
	// "BUSWAY".
	Stream string
	// SubjectPrefix: topic t is the subject "<SubjectPrefix>.<t>", and the
	// stream holds "<SubjectPrefix>.>". Dot-separated tokens of letters,
	// digits, '_' and '-'. Default "busway".
	SubjectPrefix string
	// Provision: create or update the stream (default), or bind to an
	// existing one.
	Provision Provision
	// Storage of a created stream: StorageFile (default) or StorageMemory.
	// Storage, Replicas, MaxAge and Duplicates apply to a stream New
	// creates; an existing stream keeps its own.
	Storage Storage
	// Replicas of a created stream (1 to 5). Default 1.
	Replicas int
	// MaxAge drops messages older than this from a created stream. Default
	// 0: kept until other limits apply (none by default).
	MaxAge time.Duration
	// Duplicates is the window in which a re-published message ID is
	// dropped. Default 2m (the server's default).
	Duplicates time.Duration

	// AckWait is how long the server waits for an ack before it redelivers
	// a message; the transport reports progress of handlers that run longer,
	// so this bounds how soon a crashed member's messages are redelivered.
	// Default 30s.
	AckWait time.Duration
	// MaxDeliver caps deliveries of one message; a message past it is no
	// longer delivered (it stays in the stream). Default -1: unlimited, so
	// nothing is dropped; use the DeadLetter middleware to stop retrying.
	MaxDeliver int
	// BackOff, when set, replaces AckWait for redeliveries after an ack
	// timeout, one entry per delivery (the server's consumer BackOff).
	// Default none.
	BackOff []time.Duration
	// NakDelays are the delays before a message whose handler failed is
	// redelivered, by attempt (the last entry repeats): the Delays of a
	// backoff.Policy, without jitter. Default DefaultNakDelays: 100ms,
	// 500ms, 2s, 5s.
	NakDelays []time.Duration
	// MaxAckPending caps messages delivered to a subscription's group and
	// not yet acked, the bound on in-flight memory. Default
	// max(2048, 64*Concurrency) of the subscription that created or last
	// updated the group's consumer: eight times the default MaxHeld, so
	// that eight dead members cannot fill it (the server's own default is
	// 1000).
	MaxAckPending int
	// PublishTimeout bounds waiting for the server's acks when the Publish
	// context has no deadline. Default 5s.
	PublishTimeout time.Duration

	// Embedded, when non-nil, starts an in-process nats-server with
	// JetStream that the transport connects to and shuts down on Close.
	Embedded *EmbeddedConfig

	// Logger receives connection events (disconnects, reconnects,
	// asynchronous errors). Default: discard.
	Logger *slog.Logger
}

// EmbeddedConfig configures the in-process server of Config.Embedded.
type EmbeddedConfig struct {
	// StoreDir is the directory where JetStream keeps its files. Required:
	// the point of the embedded server is that messages survive a restart.
	StoreDir string
	// Host is the interface the server listens on for other clients.
	// Default "127.0.0.1".
	Host string
	// Port is the TCP port for other clients. 0 or -1: a random free port
	// (see Transport.EmbeddedURL).
	Port int
	// NoListen disables the TCP listener: only this process reaches the
	// server. Default false.
	NoListen bool
	// ServerName names the server. Default "busway-embedded".
	ServerName string
	// MaxPayload is the largest message the server accepts, in bytes.
	// Default 1 MiB (the server's default).
	MaxPayload int32
}

// settings is a validated Config with the defaults applied.
type settings struct {
	Config
	subjectBase string // SubjectPrefix + "."
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: nats: "+format, append([]any{transport.ErrInvalidOptions}, args...)...)
}

func (c Config) settings() (*settings, error) {
	s := &settings{Config: c}
	if s.Name == "" {
		s.Name = DefaultConnectionName
	}
	if s.ConnectTimeout == 0 {
		s.ConnectTimeout = DefaultConnectTimeout
	}
	if s.Stream == "" {
		s.Stream = DefaultStream
	}
	if s.SubjectPrefix == "" {
		s.SubjectPrefix = DefaultSubjectPrefix
	}
	if s.Replicas == 0 {
		s.Replicas = 1
	}
	if s.Duplicates == 0 {
		s.Duplicates = DefaultDuplicates
	}
	if s.AckWait == 0 {
		s.AckWait = DefaultAckWait
	}
	if s.MaxDeliver == 0 {
		s.MaxDeliver = -1
	}
	if len(s.NakDelays) == 0 {
		s.NakDelays = DefaultNakDelays
	}
	if s.PublishTimeout == 0 {
		s.PublishTimeout = DefaultPublishTimeout
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.Embedded != nil && len(s.Servers) > 0 {
		return nil, invalid("Servers %v and Embedded are both set (the embedded server is the server)", s.Servers)
	}
	if s.Embedded == nil && len(s.Servers) == 0 {
		s.Servers = []string{DefaultURL}
	}
	for i, u := range s.Servers {
		if strings.TrimSpace(u) == "" {
			return nil, invalid("Servers[%d] is empty", i)
		}
	}
	switch {
	case s.ConnectTimeout < 0:
		return nil, invalid("ConnectTimeout %v is negative", s.ConnectTimeout)
	case s.Provision != ProvisionCreate && s.Provision != ProvisionBind:
		return nil, invalid("Provision %v is neither ProvisionCreate nor ProvisionBind", s.Provision)
	case s.Storage != StorageFile && s.Storage != StorageMemory:
		return nil, invalid("Storage %v is neither StorageFile nor StorageMemory", s.Storage)
	case s.Replicas < 1 || s.Replicas > 5:
		return nil, invalid("Replicas %d is not between 1 and 5", s.Replicas)
	case s.MaxAge < 0:
		return nil, invalid("MaxAge %v is negative", s.MaxAge)
	case s.Duplicates < 0:
		return nil, invalid("Duplicates %v is negative", s.Duplicates)
	case s.AckWait < 0:
		return nil, invalid("AckWait %v is negative", s.AckWait)
	case s.MaxDeliver < -1:
		return nil, invalid("MaxDeliver %d is below -1 (-1 means unlimited)", s.MaxDeliver)
	case s.MaxAckPending < 0:
		return nil, invalid("MaxAckPending %d is negative", s.MaxAckPending)
	case s.PublishTimeout < 0:
		return nil, invalid("PublishTimeout %v is negative", s.PublishTimeout)
	case s.User == "" && s.Password != "":
		return nil, invalid("Password is set without User")
	}
	if s.MaxAge > 0 && s.Duplicates > s.MaxAge {
		return nil, invalid("Duplicates %v is longer than MaxAge %v", s.Duplicates, s.MaxAge)
	}
	if err := checkBackOff(s.BackOff, s.MaxDeliver); err != nil {
		return nil, err
	}
	for i, d := range s.NakDelays {
		if d < 0 {
			return nil, invalid("NakDelays[%d] %v is negative", i, d)
		}
	}
	if err := checkStreamName(s.Stream); err != nil {
		return nil, err
	}
	if err := checkSubjectPrefix(s.SubjectPrefix); err != nil {
		return nil, err
	}
	s.subjectBase = s.SubjectPrefix + "."
	if e := s.Embedded; e != nil {
		if e.StoreDir == "" {
			return nil, invalid("Embedded.StoreDir is required (the directory where JetStream keeps its files)")
		}
		if e.Port < -1 || e.Port > 65535 {
			return nil, invalid("Embedded.Port %d is not a port (0 or -1 mean a random one)", e.Port)
		}
		if e.MaxPayload < 0 {
			return nil, invalid("Embedded.MaxPayload %d is negative", e.MaxPayload)
		}
	}
	return s, nil
}

func checkBackOff(b []time.Duration, maxDeliver int) error {
	for i, d := range b {
		if d <= 0 {
			return invalid("BackOff[%d] %v is not positive", i, d)
		}
	}
	if len(b) > 0 && maxDeliver != -1 && maxDeliver <= len(b) {
		return invalid("MaxDeliver %d must exceed the %d BackOff entries", maxDeliver, len(b))
	}
	return nil
}

func checkStreamName(name string) error {
	if p := nameProblem(name); p != "" {
		return invalid("Stream %q: %s", name, p)
	}
	return nil
}

// nameProblem applies the server's rule for stream and consumer names (1
// to 255 characters; no whitespace, '.', '*', '>', path separators or
// control characters) and says what breaks it, or "".
func nameProblem(name string) string {
	switch {
	case name == "":
		return "empty"
	case len(name) > 255:
		return "longer than 255 characters"
	}
	for i, r := range name {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(".*>/\\", r) {
			return fmt.Sprintf("character %q at %d is not allowed (no whitespace, '.', '*', '>', '/', '\\')", r, i)
		}
	}
	return ""
}

func checkSubjectPrefix(p string) error {
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" {
			return invalid("SubjectPrefix %q has an empty token (leading, trailing or double '.')", p)
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
				continue
			}
			return invalid("SubjectPrefix %q: character %q is not allowed (use letters, digits, '_', '-', and '.' between tokens)", p, rune(c))
		}
	}
	return nil
}
