// Command busway tails, publishes, lists and replays busway events on any
// transport URL (chan://, nats://..., kafka://...). See doc.go, or run
// busway --help.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// SIGHUP too: a tail whose terminal closed deletes its throwaway group.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}
