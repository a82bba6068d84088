// Package bushook gives package bustest a setting of bus.Bus that is not
// part of bus's public API: a production program must not add handlers to
// a (topic, group) that is consuming, but a test harness on chanbus can do
// it without skipping events, as its bus waits until it is settled first.
package bushook

import "context"

// LiveSubscribe is set by package bus. LiveSubscribe(settle) returns a
// bus.Option (as any, since this package cannot import bus) with which
// Subscribe on a started Bus first calls settle, then adds the handler to
// its (topic, group) even when that is consuming: every event published
// before Subscribe was delivered without the new handler, every event
// published after it returned reaches it.
var LiveSubscribe func(settle func(context.Context) error) any
