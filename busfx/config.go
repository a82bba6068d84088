package busfx

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/busway/busway"
	"github.com/busway/busway/transport"
)

// The environment variables LoadConfig reads.
const (
	EnvURL             = "BUS_URL"
	EnvSource          = "BUS_SOURCE"
	EnvShutdownTimeout = "BUS_SHUTDOWN_TIMEOUT"
)

// DefaultShutdownTimeout is Config.ShutdownTimeout's default.
const DefaultShutdownTimeout = 30 * time.Second

// ErrInvalidConfig is wrapped by every error of LoadConfig, ParseEnv and
// Config.Validate.
var ErrInvalidConfig = errors.New("invalid configuration")

// Config is what the Module needs to build a bus. The zero value means the
// defaults; Module reads it from the environment with LoadConfig, and
// fx.Replace(busfx.Config{...}) sets it in code instead.
type Config struct {
	// URL names the transport: chan://, nats://host:4222,
	// nats://embedded?store_dir=DIR, kafka://host:9092 (see package busway).
	// From BUS_URL. Default busway.DefaultURL ("chan://").
	URL string
	// Source is the CloudEvents source of the events the bus publishes,
	// e.g. "orders-svc". From BUS_SOURCE. Default: the program's base name.
	Source string
	// ShutdownTimeout bounds the bus's shutdown (draining in-flight
	// handlers, stopping relays, closing the transport) within the fx stop
	// deadline, whichever ends first. From BUS_SHUTDOWN_TIMEOUT as a Go
	// duration ("10s"). Default DefaultShutdownTimeout (30s).
	ShutdownTimeout time.Duration
}

// LoadConfig reads Config from the process environment (BUS_URL,
// BUS_SOURCE, BUS_SHUTDOWN_TIMEOUT) and validates it.
func LoadConfig() (Config, error) { return ParseEnv(os.LookupEnv) }

// ParseEnv reads Config through lookup (os.LookupEnv, or a map in tests)
// and validates it. An unset or empty variable means its default. The
// error names the variable and its bad value.
func ParseEnv(lookup func(string) (string, bool)) (Config, error) {
	get := func(k string) string {
		v, _ := lookup(k)
		return strings.TrimSpace(v)
	}
	c := Config{URL: get(EnvURL), Source: get(EnvSource)}
	if v := get(EnvShutdownTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return Config{}, fmt.Errorf("busway: %w: %s=%q: want a positive Go duration such as 10s", ErrInvalidConfig, EnvShutdownTimeout, v)
		}
		c.ShutdownTimeout = d
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks what can be checked without opening the transport: that
// URL parses and has a scheme, that Source has no spaces or control
// characters, that ShutdownTimeout is not negative. Errors name the
// environment variable the field comes from and wrap ErrInvalidConfig.
// Whether the scheme is known and the options valid is checked when the
// transport opens.
func (c Config) Validate() error {
	if c.URL != "" {
		if _, err := transport.ParseURL(c.URL); err != nil {
			shown, why := transport.RedactRaw(c.URL), err
			if ue, ok := errors.AsType[*transport.URLError](err); ok {
				shown, why = ue.URL, ue.Err // redacted already; without "transport URL": the variable names it
			}
			return fmt.Errorf("busway: %w: %s=%q: %v", ErrInvalidConfig, EnvURL, shown, why)
		}
	}
	if strings.ContainsFunc(c.Source, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("busway: %w: %s=%q: a CloudEvents source must not contain spaces or control characters", ErrInvalidConfig, EnvSource, c.Source)
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("busway: %w: ShutdownTimeout %v is negative", ErrInvalidConfig, c.ShutdownTimeout)
	}
	return nil
}

func (c Config) url() string {
	if c.URL == "" {
		return busway.DefaultURL
	}
	return c.URL
}

func (c Config) shutdownTimeout() time.Duration {
	if c.ShutdownTimeout == 0 {
		return DefaultShutdownTimeout
	}
	return c.ShutdownTimeout
}

// Redacted is the URL (the default when empty) with its credentials
// hidden (transport.RedactRaw), for errors and logs.
func (c Config) Redacted() string {
	return transport.RedactRaw(c.url())
}
