package transport_test

import (
	"context"
	"errors"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/busway/busway/transport"
)

// TestCloseOnce: Closed is true while the close function runs and after;
// the function runs once; every caller, concurrent ones too, returns after
// it with its error.
func TestCloseOnce(t *testing.T) {
	var c transport.CloseOnce
	if c.Closed() {
		t.Fatal("zero CloseOnce is closed")
	}
	boom := errors.New("boom")
	var runs atomic.Int32
	release := make(chan struct{})
	inside := make(chan struct{})
	var done atomic.Bool
	closeFn := func() error {
		runs.Add(1)
		if !c.Closed() {
			t.Error("Closed is false while the close function runs")
		}
		close(inside)
		<-release
		done.Store(true)
		return boom
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := c.Do(closeFn); err != boom {
				t.Errorf("Do: %v, want the close function's error", err)
			}
			if !done.Load() {
				t.Error("Do returned before the close function finished")
			}
		})
	}
	<-inside
	close(release)
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Errorf("close function ran %d times", n)
	}
	if err := c.Do(func() error { return nil }); err != boom || !c.Closed() {
		t.Errorf("later Do: %v, Closed %v", err, c.Closed())
	}
}

type nilTransport struct{ transport.Transport }

// TestOpenConfigNilOnError: an opener built on OpenConfig returns a nil
// Transport when the transport's New fails, not an interface holding a
// nil pointer (which `return New(ctx, cfg)` as (Transport, error) gives,
// and which a caller's `if tr != nil { tr.Close() }` would crash on).
func TestOpenConfigNilOnError(t *testing.T) {
	boom := errors.New("boom")
	parse := func(*url.URL) (int, error) { return 1, nil }
	newFails := func(context.Context, int) (*nilTransport, error) { return nil, boom }
	tr, err := transport.OpenConfig(t.Context(), &url.URL{Scheme: "x"}, parse, newFails)
	if err != boom || tr != nil {
		t.Fatalf("OpenConfig with a failing New: %#v, %v; want a nil Transport and its error", tr, err)
	}
	bad := errors.New("bad url")
	tr, err = transport.OpenConfig(t.Context(), &url.URL{Scheme: "x"}, func(*url.URL) (int, error) { return 0, bad }, newFails)
	if err != bad || tr != nil {
		t.Fatalf("OpenConfig with a failing parse: %#v, %v", tr, err)
	}
	ok := &nilTransport{}
	tr, err = transport.OpenConfig(t.Context(), &url.URL{Scheme: "x"}, parse, func(context.Context, int) (*nilTransport, error) { return ok, nil })
	if err != nil || tr != transport.Transport(ok) {
		t.Fatalf("OpenConfig: %v, %v", tr, err)
	}
}
