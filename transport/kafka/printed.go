package kafka

import (
	"fmt"
	"log/slog"
)

// printedConfig is Config without its methods, for printing.
type printedConfig Config

// printedSASL is SASL without its methods, for printing.
type printedSASL SASL

func (s SASL) printed() printedSASL {
	if s.Password != "" {
		s.Password = "xxxxx"
	}
	return printedSASL(s)
}

// String returns the SASL settings as %+v prints a struct, with Password
// replaced by "xxxxx".
func (s SASL) String() string { return fmt.Sprintf("%+v", s.printed()) }

// GoString is String for %#v.
func (s SASL) GoString() string { return fmt.Sprintf("%#v", s.printed()) }

// LogValue logs the SASL settings with the password hidden.
func (s SASL) LogValue() slog.Value { return slog.AnyValue(s.printed()) }

func (c Config) printed() printedConfig {
	if c.SASL.Password != "" {
		c.SASL.Password = "xxxxx"
	}
	return printedConfig(c)
}

// String returns the Config as %+v prints a struct, with the SASL password
// replaced by "xxxxx", so that printing a Config never shows a credential.
func (c Config) String() string { return fmt.Sprintf("%+v", c.printed()) }

// GoString is String for %#v.
func (c Config) GoString() string { return fmt.Sprintf("%#v", c.printed()) }

// LogValue logs the Config with its credentials hidden (slog.LogValuer).
func (c Config) LogValue() slog.Value { return slog.AnyValue(c.printed()) }
