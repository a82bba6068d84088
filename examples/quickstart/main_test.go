package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/busway/busway/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The quickstart's output is deterministic: the same every run.
func TestOutput(t *testing.T) {
	for range 3 {
		var out strings.Builder
		if err := run(t.Context(), &out, ""); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Fatalf("output:\n%s\nwant:\n%s", out.String(), want)
		}
	}
}

func TestBadURL(t *testing.T) {
	err := run(context.Background(), &strings.Builder{}, "carrier-pigeon://coop")
	if !errors.Is(err, transport.ErrUnknownScheme) {
		t.Errorf("unknown scheme: %v", err)
	}
}

const want = `busway quickstart on chan://

order 1001 placed by alice: 42.50 EUR
  billing:  invoice INV-1001 issued for 42.50 EUR (attempt 1)
  shipping: parcel for order 1001 packed, waiting for the invoice
  shipping: invoice INV-1001 seen: parcel PCL-1001 shipped
  notifier: mail: your invoice INV-1001 over 42.50 EUR
  notifier: mail: order 1001 is on its way (PCL-1001)

order 1002 placed by bob: 19.99 EUR
  billing:  payment for order 1002 declined (attempt 1): will be delivered again
  billing:  invoice INV-1002 issued for 19.99 EUR (attempt 2)
  shipping: parcel for order 1002 packed, waiting for the invoice
  shipping: invoice INV-1002 seen: parcel PCL-1002 shipped
  notifier: mail: your invoice INV-1002 over 19.99 EUR
  notifier: mail: order 1002 is on its way (PCL-1002)

order 1003 placed by carol: 120.00 EUR
  billing:  invoice INV-1003 issued for 120.00 EUR (attempt 1)
  shipping: parcel for order 1003 packed, waiting for the invoice
  shipping: invoice INV-1003 seen: parcel PCL-1003 shipped
  notifier: mail: your invoice INV-1003 over 120.00 EUR
  notifier: mail: order 1003 is on its way (PCL-1003)

shut down: 9 events published, 15 handled, 1 failed and delivered again, 12 ignored by groups without a handler for their type
`
