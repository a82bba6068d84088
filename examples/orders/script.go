package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/busway/busway/examples/orders/billing"
	"github.com/busway/busway/examples/orders/orders"
)

// Script is the -demo mode: it places orders through the HTTP API and
// waits until every one of them reached its final state.
type Script struct {
	URL    string // the app's base URL
	Orders int
	// Concurrency is the number of clients placing orders. Default 8.
	Concurrency int
	// Progress shows progress bars; nil shows none.
	Progress io.Writer
	// Timeout bounds the whole run. Default 2 minutes.
	Timeout time.Duration
	// RunID prefixes the order IDs. Default: derived from the clock, so that
	// a run on a data directory of earlier runs counts only its own.
	RunID string
}

// PoisonEvery makes every PoisonEvery-th order (the 42nd, 142nd, ...)
// pay with billing.StolenCard.
const PoisonEvery = 100

// OrderRequest is the i-th order of a run.
func OrderRequest(run string, i int) orders.PlaceRequest {
	customers := []string{"ada", "grace", "edsger", "barbara", "ken", "margaret", "linus", "radia"}
	card := "4242424242424242"
	if i%PoisonEvery == 42 {
		card = billing.StolenCard
	}
	return orders.PlaceRequest{
		ID:       fmt.Sprintf("%s-%04d", run, i),
		Customer: customers[i%len(customers)],
		Cents:    int64(500 + (i*1379)%20000),
		Card:     card,
	}
}

// Run places the orders and waits for their final states.
func (s Script) Run(ctx context.Context) (Summary, error) {
	s.Concurrency = cmp.Or(s.Concurrency, 8)
	s.Timeout = cmp.Or(s.Timeout, 2*time.Minute)
	s.RunID = cmp.Or(s.RunID, "r"+strconv.FormatInt(time.Now().UnixMilli(), 36))
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	start := time.Now()
	c := &Client{URL: s.URL}

	bar := s.bar("placing orders ")
	work := make(chan int)
	errs := make(chan error, s.Concurrency)
	var wg sync.WaitGroup
	for range s.Concurrency {
		wg.Go(func() {
			for i := range work {
				if err := c.Place(ctx, OrderRequest(s.RunID, i)); err != nil {
					errs <- err
					return
				}
				bar.Add(1)
			}
		})
	}
	var err error
feed:
	for i := range s.Orders {
		select {
		case work <- i:
		case err = <-errs:
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	bar.Finish()
	if err != nil {
		return Summary{}, err
	}

	bar = s.bar("orders completed")
	l, err := c.WaitFinal(ctx, s.RunID, s.Orders, func(final int) { bar.Set(final) })
	bar.Finish()
	if err != nil {
		return Summary{}, err
	}
	sum := Summarize(l.Orders)
	sum.Took = time.Since(start)
	return sum, nil
}

func (s Script) bar(what string) *progressbar.ProgressBar {
	if s.Progress == nil {
		return progressbar.DefaultSilent(int64(s.Orders))
	}
	return progressbar.NewOptions(s.Orders,
		progressbar.OptionSetWriter(s.Progress),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(50*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(s.Progress) }),
	)
}

// Client talks to the orders API.
type Client struct {
	URL string
	// HTTP is the client. Default: one with a 10 s timeout.
	HTTP *http.Client
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 10 * time.Second}
}

// Place places an order, retrying (the order ID makes that safe) until ctx
// ends when the server does not answer or answers 5xx.
func (c *Client) Place(ctx context.Context, req orders.PlaceRequest) error {
	body, _ := json.Marshal(req)
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		code, msg, err := c.do(ctx, http.MethodPost, "/orders", body)
		switch {
		case err == nil && (code == http.StatusCreated || code == http.StatusOK):
			return nil
		case err == nil && code < 500:
			return fmt.Errorf("POST /orders %s: %d %s", req.ID, code, msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("POST /orders %s: %w (last: %d %s %v)", req.ID, ctx.Err(), code, msg, err)
		case <-time.After(backoff):
		}
	}
}

// List lists the orders whose ID starts with prefix.
func (c *Client) List(ctx context.Context, prefix string) (orders.List, error) {
	code, body, err := c.do(ctx, http.MethodGet, "/orders?prefix="+prefix, nil)
	if err != nil {
		return orders.List{}, err
	}
	if code != http.StatusOK {
		return orders.List{}, fmt.Errorf("GET /orders: %d %s", code, body)
	}
	var l orders.List
	return l, json.Unmarshal(body, &l)
}

// WaitFinal polls until n orders of the run are in a final state, calling
// progress with the number that are.
func (c *Client) WaitFinal(ctx context.Context, run string, n int, progress func(final int)) (orders.List, error) {
	for {
		l, err := c.List(ctx, run)
		final := l.Counts[orders.StatusShipped] + l.Counts[orders.StatusFailed]
		if err == nil {
			progress(final)
			if final >= n {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return l, fmt.Errorf("%d of %d orders reached a final state (%v): %w (last error: %v)", final, n, l.Counts, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Client) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http().Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, bytes.TrimSpace(b), err
}

// Summary is what a run did.
type Summary struct {
	Placed, Paid, Shipped, Failed int
	// Retried counts orders whose payment needed more than one provider
	// call; RetriedCalls the failed calls.
	Retried, RetriedCalls int
	Reasons               map[string]int // dead-letter reasons
	P50, P99              time.Duration  // placed -> final state
	Took                  time.Duration
	Transport             string
}

// Summarize computes the summary of a run's orders.
func Summarize(os []orders.Order) Summary {
	s := Summary{Placed: len(os), Reasons: map[string]int{}}
	var lat []time.Duration
	for _, o := range os {
		if o.PaidAt != nil {
			s.Paid++
		}
		if o.Attempts > 1 {
			s.Retried++
			s.RetriedCalls += o.Attempts - 1
		}
		switch o.Status {
		case orders.StatusShipped:
			s.Shipped++
		case orders.StatusFailed:
			s.Failed++
			s.Reasons[o.Reason]++
		}
		if o.FinalAt != nil {
			lat = append(lat, o.FinalAt.Sub(o.PlacedAt))
		}
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		s.P50 = lat[(len(lat)-1)*50/100]
		s.P99 = lat[(len(lat)-1)*99/100]
	}
	return s
}

// Print writes the summary for a person to read at a glance.
func (s Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "\norders demo on %s\n", s.Transport)
	fmt.Fprintf(w, "  placed         %4d  through POST /orders (order row + OrderPlaced in one SQLite transaction)\n", s.Placed)
	fmt.Fprintf(w, "  paid           %4d\n", s.Paid)
	fmt.Fprintf(w, "  shipped        %4d\n", s.Shipped)
	fmt.Fprintf(w, "  retried        %4d  payments: %d provider timeouts retried in place\n", s.Retried, s.RetriedCalls)
	fmt.Fprintf(w, "  dead-lettered  %4d  to orders.dlq\n", s.Failed)
	reasons := make([]string, 0, len(s.Reasons))
	for r := range s.Reasons {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		fmt.Fprintf(w, "                 %4d × %s\n", s.Reasons[r], r)
	}
	fmt.Fprintf(w, "  latency        p50 %v, p99 %v (placed → shipped or dead-lettered)\n", round(s.P50), round(s.P99))
	fmt.Fprintf(w, "  took           %v\n", s.Took.Round(time.Millisecond))
}

// round keeps a duration's first four digits or so.
func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
