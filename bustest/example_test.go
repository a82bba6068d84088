package bustest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/bustest"
)

// A handler test: subscribe the handler, publish, wait, look at the
// records. In a test, t is the test's *testing.T.
func Example() {
	t, done := exampleT()
	defer done()

	h := bustest.New(t)
	bus.Subscribe(h.Bus(), "billing", billing{h.Bus()}.OnOrderCreated)

	bus.Publish(t.Context(), h.Bus(), OrderCreated{ID: "42", Amount: 1999})
	bus.Publish(t.Context(), h.Bus(), OrderCreated{ID: "43"})
	h.Wait()

	for _, e := range bustest.Published[InvoiceIssued](h) {
		fmt.Printf("invoice for order %s: %d cents\n", e.Data.Order, e.Data.Amount)
	}
	for _, c := range bustest.Handled[OrderCreated](h) {
		fmt.Printf("%s handled order %s: %v\n", c.Group, c.Data.ID, c.Err)
	}
	// Unordered output:
	// invoice for order 42: 1999 cents
	// billing handled order 42: <nil>
	// billing handled order 43: order without amount
}

// exampleT stands in for the *testing.T of a test, so that the example
// runs: it implements what the harness uses.
func exampleT() (testing.TB, func()) {
	t := &fakeT{}
	return t, func() {
		for i := len(t.cleanups) - 1; i >= 0; i-- {
			t.cleanups[i]()
		}
	}
}

type fakeT struct {
	testing.TB // not set: the methods below are all the harness needs
	cleanups   []func()
}

func (t *fakeT) Helper()                         {}
func (t *fakeT) Cleanup(f func())                { t.cleanups = append(t.cleanups, f) }
func (t *fakeT) Context() context.Context        { return context.Background() }
func (t *fakeT) Errorf(format string, a ...any)  { fmt.Printf("error: "+format+"\n", a...) }
func (t *fakeT) Fatalf(format string, a ...any)  { panic(fmt.Sprintf(format, a...)) }
func (t *fakeT) Logf(format string, args ...any) {}
