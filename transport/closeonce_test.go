package transport_test

import (
	"errors"
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
