package busfx

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/goleak"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// journal records what happened, in order.
type journal struct {
	mu     sync.Mutex
	events []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, fmt.Sprintf(format, args...))
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.events)
}

// recMux is a mux whose "rec" scheme opens chanbus and journals the
// transport's open, subscribe, subscription close and close.
func recMux(j *journal, subClosing chan struct{}) *transport.Mux {
	var m transport.Mux
	m.Register("rec", transport.OpenerFunc(func(ctx context.Context, u *url.URL) (transport.Transport, error) {
		j.add("transport open")
		return &recTransport{Transport: chanbus.New(), j: j, closing: subClosing}, nil
	}))
	return &m
}

type recTransport struct {
	*chanbus.Transport
	j       *journal
	closing chan struct{}
	once    sync.Once
}

func (t *recTransport) Subscribe(ctx context.Context, topic string, h transport.Handler, o transport.SubscribeOptions) (transport.Subscription, error) {
	t.j.add("subscribe %s/%s", topic, o.Group)
	s, err := t.Transport.Subscribe(ctx, topic, h, o)
	if err != nil {
		return nil, err
	}
	return &recSub{s, t}, nil
}

func (t *recTransport) Close() error {
	t.j.add("transport close")
	return t.Transport.Close()
}

type recSub struct {
	transport.Subscription
	t *recTransport
}

func (s *recSub) Close(ctx context.Context) error {
	s.t.once.Do(func() { close(s.t.closing) })
	err := s.Subscription.Close(ctx)
	s.t.j.add("subscription closed")
	return err
}

type OrderPlaced struct{ ID string }
type OrderCancelled struct{ ID string }

// store stands for a database the handlers use: it must be open while
// they run.
type store struct {
	j    *journal
	mu   sync.Mutex
	open bool
	seen []string
}

func newStore(lc fx.Lifecycle, j *journal) *store {
	s := &store{j: j}
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error { s.set(true); j.add("store open"); return nil },
		OnStop:  func(context.Context) error { s.set(false); j.add("store closed"); return nil },
	})
	return s
}

func (s *store) set(open bool) { s.mu.Lock(); s.open = open; s.mu.Unlock() }

func (s *store) write(v string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.open {
		return errors.New("store closed")
	}
	s.seen = append(s.seen, v)
	return nil
}

// billing is a service whose handlers use the store.
type billing struct {
	s       *store
	j       *journal
	closing chan struct{}
	started chan struct{} // the slow handler runs
	got     chan string
}

func (b *billing) OnPlaced(ctx context.Context, e bus.Event[OrderPlaced]) error {
	if e.Data.ID == "slow" {
		close(b.started)
		// In flight while the app stops: returns only after the
		// subscription began closing, so the drain must wait for it.
		<-b.closing
		time.Sleep(20 * time.Millisecond) // let a wrong shutdown order overtake it
		b.j.add("slow handler returned")
	}
	if err := b.s.write("placed " + e.Data.ID); err != nil {
		b.j.add("handler error: %v", err)
		return err
	}
	b.got <- "placed " + e.Data.ID
	return nil
}

func (b *billing) OnCancelled(ctx context.Context, e bus.Event[OrderCancelled]) error {
	if err := b.s.write("cancelled " + e.Data.ID); err != nil {
		return err
	}
	b.got <- "cancelled " + e.Data.ID
	return nil
}

func TestStartStopOrder(t *testing.T) {
	j := &journal{}
	closing := make(chan struct{})
	started := make(chan struct{})
	got := make(chan string, 10)
	var b *bus.Bus
	var lt *lazyTransport
	app := fxtest.New(t,
		Module,
		fx.Replace(Config{URL: "rec://", Source: "test"}),
		fx.Supply(recMux(j, closing), j),
		// billing publishes too, so it needs the bus, which is therefore
		// constructed before the store: the bus's start and stop must
		// still come after and before the store's.
		fx.Provide(newStore, func(_ *bus.Bus, s *store) *billing {
			return &billing{s: s, j: j, closing: closing, started: started, got: got}
		}),
		Register[OrderPlaced]("orders"),
		Register[OrderCancelled]("orders"),
		Subscribe("billing", (*billing).OnPlaced, bus.WithConcurrency(2)),
		Subscribe("billing", (*billing).OnCancelled, bus.WithConcurrency(2)),
		fx.Populate(&b),
		fx.Invoke(func(t transport.Transport) {
			lt = t.(*lazyTransport)
			// Stands for the outbox relay: it must stop after the handlers
			// drained and before the transport closes.
			lt.beforeClose(func(context.Context) error { j.add("relay stopped"); return nil })
		}),
	)
	app.RequireStart()
	ctx := t.Context()
	if err := bus.Publish(ctx, b, OrderPlaced{ID: "1"}, bus.WithKey("1")); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, b, OrderCancelled{ID: "1"}, bus.WithKey("1")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"placed 1", "cancelled 1"} {
		if g := <-got; g != want {
			t.Fatalf("handled %q, want %q", g, want)
		}
	}
	if err := bus.Publish(ctx, b, OrderPlaced{ID: "slow"}, bus.WithKey("slow")); err != nil {
		t.Fatal(err)
	}
	<-started // stop while it is in flight
	app.RequireStop()

	g := j.list()
	if len(g) < 2 || !slices.Contains(g[:2], "transport open") || !slices.Contains(g[:2], "store open") {
		t.Fatalf("lifecycle: %q: want the transport and the store opened first", g)
	}
	want := []string{
		"subscribe orders/billing", // one subscription for both types
		"slow handler returned",
		"subscription closed",
		"relay stopped",
		"transport close",
		"store closed",
	}
	if g := g[2:]; !slices.Equal(g, want) {
		t.Fatalf("lifecycle:\n got %q\nwant %q", g, want)
	}
	if g := got; len(g) != 1 || <-g != "placed slow" {
		t.Fatal("the in-flight handler's effect is missing")
	}
}

func TestHandlersReceiveEventsOnChanbus(t *testing.T) {
	got := make(chan string, 10)
	var b *bus.Bus
	app := fxtest.New(t,
		Module,
		fx.Replace(Config{URL: "chan://"}),
		fx.Supply(Middleware{middleware.Retry(middleware.RetryOptions{InitialInterval: time.Millisecond}), middleware.Recover()}),
		fx.Provide(func() *flaky { return &flaky{got: got} }),
		Subscribe("shipping", (*flaky).On),
		SubscribeFunc("audit", func(ctx context.Context, e bus.Event[OrderPlaced]) error {
			got <- "audit " + e.Data.ID
			return nil
		}),
		fx.Populate(&b),
	)
	app.RequireStart()
	defer app.RequireStop()
	if err := bus.Publish(t.Context(), b, OrderPlaced{ID: "7"}); err != nil {
		t.Fatal(err)
	}
	var g []string
	for range 2 {
		g = append(g, <-got)
	}
	slices.Sort(g)
	if want := []string{"audit 7", "shipping 7 attempt 2"}; !slices.Equal(g, want) {
		t.Fatalf("got %q, want %q", g, want)
	}
}

// flaky fails its first call (retried by the Middleware in the chain) and
// panics never: it proves the Middleware list is applied.
type flaky struct {
	mu    sync.Mutex
	calls int
	got   chan string
}

func (f *flaky) On(ctx context.Context, e bus.Event[OrderPlaced]) error {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	if n == 1 {
		return errors.New("transient")
	}
	f.got <- fmt.Sprintf("shipping %s attempt %d", e.Data.ID, n)
	return nil
}

func TestPublishOnlyApp(t *testing.T) {
	var b *bus.Bus
	var tr transport.Transport
	app := fxtest.New(t, Module, fx.Replace(Config{URL: "chan://"}), fx.Populate(&b, &tr))
	if err := bus.Publish(t.Context(), b, OrderPlaced{ID: "early"}); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Publish before start = %v, want ErrNotStarted", err)
	}
	app.RequireStart()
	if err := bus.Publish(t.Context(), b, OrderPlaced{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	app.RequireStop()
	if err := bus.Publish(t.Context(), b, OrderPlaced{ID: "late"}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Publish after stop = %v, want ErrClosed", err)
	}
}

func TestBadConfigFailsStartup(t *testing.T) {
	for _, tc := range []struct {
		env      map[string]string
		atStart  bool // the error comes from Start, not fx.New
		mentions []string
	}{
		{map[string]string{"BUS_URL": "redis://localhost:6379"}, false, []string{"BUS_URL", `"redis"`}},
		{map[string]string{"BUS_URL": "localhost:4222"}, false, []string{"BUS_URL", `"localhost"`}},
		{map[string]string{"BUS_URL": "chan://?buffer=lots"}, true, []string{"BUS_URL", `"buffer"`}},
		{map[string]string{"BUS_URL": "nats://127.0.0.1:4222?strem=X"}, true, []string{"BUS_URL", `"strem"`}},
		{map[string]string{"BUS_URL": "kafka://localhost:9092?acks=some"}, true, []string{"BUS_URL", `"acks"`}},
		{map[string]string{"BUS_SHUTDOWN_TIMEOUT": "soon"}, false, []string{"BUS_SHUTDOWN_TIMEOUT", `"soon"`}},
		{map[string]string{"BUS_SHUTDOWN_TIMEOUT": "-1s"}, false, []string{"BUS_SHUTDOWN_TIMEOUT", `"-1s"`}},
		{map[string]string{"BUS_SOURCE": "orders svc"}, false, []string{"BUS_SOURCE", `"orders svc"`}},
	} {
		t.Run(fmt.Sprint(tc.env), func(t *testing.T) {
			for _, k := range []string{EnvURL, EnvSource, EnvShutdownTimeout} {
				t.Setenv(k, tc.env[k])
			}
			app := fx.New(Module, fx.NopLogger, fx.Invoke(func(*bus.Bus) {}))
			err := app.Err()
			if tc.atStart {
				if err != nil {
					t.Fatalf("fx.New = %v, want the error at Start", err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err = app.Start(ctx)
				if err == nil {
					app.Stop(ctx)
				}
			}
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			for _, m := range tc.mentions {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %s", err, m)
				}
			}
		})
	}
}

func TestParseEnvDefaults(t *testing.T) {
	c, err := ParseEnv(func(string) (string, bool) { return "", false })
	if err != nil || c != (Config{}) {
		t.Fatalf("ParseEnv(empty) = %+v, %v", c, err)
	}
	if c.url() != "chan://" || c.shutdownTimeout() != DefaultShutdownTimeout {
		t.Fatalf("defaults: %s %v", c.url(), c.shutdownTimeout())
	}
	env := map[string]string{"BUS_URL": "nats://embedded?store_dir=/tmp/x", "BUS_SOURCE": "orders", "BUS_SHUTDOWN_TIMEOUT": "5s"}
	c, err = ParseEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil || c != (Config{URL: env["BUS_URL"], Source: "orders", ShutdownTimeout: 5 * time.Second}) {
		t.Fatalf("ParseEnv = %+v, %v", c, err)
	}
	_ = os.Getenv
}

// TestValidateHidesCredentials: a BUS_URL that does not parse is reported
// without its password or token (url.Parse's own error quotes it whole).
func TestValidateHidesCredentials(t *testing.T) {
	for _, raw := range []string{"nats://user:hunter2pw@h:port", "nats://t0kenvalue@h:port", "nats://h:port?token=t0kenvalue",
		"nats://user:hunter2pw/x@h:4222", "nats://t0kenvalue?x@h:4222", "nats://user:x#hunter2pw@h:4222"} {
		err := Config{URL: raw}.Validate()
		if err == nil {
			t.Fatalf("Validate(%q) = nil", raw)
		}
		if strings.Contains(err.Error(), "hunter2pw") || strings.Contains(err.Error(), "t0kenvalue") {
			t.Errorf("Validate(%q) = %v: shows the secret", raw, err)
		}
	}
}
