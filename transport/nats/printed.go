package nats

import (
	"fmt"
	"log/slog"
)

// printedConfig is Config without its methods, for printing.
type printedConfig Config

func (c Config) printed() printedConfig {
	if c.Password != "" {
		c.Password = "xxxxx"
	}
	if c.Token != "" {
		c.Token = "xxxxx"
	}
	return printedConfig(c)
}

// String returns the Config as %+v prints a struct, with Password and Token
// replaced by "xxxxx", so that printing a Config never shows a credential.
func (c Config) String() string { return fmt.Sprintf("%+v", c.printed()) }

// GoString is String for %#v.
func (c Config) GoString() string { return fmt.Sprintf("%#v", c.printed()) }

// LogValue logs the Config with its credentials hidden (slog.LogValuer).
func (c Config) LogValue() slog.Value { return slog.AnyValue(c.printed()) }
