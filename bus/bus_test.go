package bus_test

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/goleak"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type OrderCreated struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

type OrderShipped struct {
	ID string `json:"id"`
}

type valueNamed struct{ N int }

func (valueNamed) EventType() string { return "com.example.value.v1" }

type pointerNamed struct{ N int }

func (p *pointerNamed) EventType() string { return "com.example.pointer.v1" }

type panicky struct{ m map[string]string }

func (p *panicky) EventType() string { return p.m["x"] + string(rune(1/len(p.m))) }

type spaced struct{}

func (spaced) EventType() string { return "has space" }

type Generic[T any] struct{ V T }

func TestEventTypeOf(t *testing.T) {
	tests := []struct {
		name    string
		got     func() (string, error)
		want    string
		wantErr string
	}{
		{"go type name", bus.EventTypeOf[OrderCreated], "OrderCreated", ""},
		{"pointer takes elem name", bus.EventTypeOf[*OrderCreated], "OrderCreated", ""},
		{"value receiver", bus.EventTypeOf[valueNamed], "com.example.value.v1", ""},
		{"value receiver via pointer", bus.EventTypeOf[*valueNamed], "com.example.value.v1", ""},
		{"pointer receiver", bus.EventTypeOf[pointerNamed], "com.example.pointer.v1", ""},
		{"pointer receiver via pointer", bus.EventTypeOf[*pointerNamed], "com.example.pointer.v1", ""},
		{"unnamed type", bus.EventTypeOf[map[string]int], "", "has no name"},
		{"interface", bus.EventTypeOf[any], "", "interface"},
		{"panicking EventType", bus.EventTypeOf[panicky], "", "panicked"},
		{"space in name", bus.EventTypeOf[spaced], "", "space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.got()
			if tt.wantErr != "" {
				if !errors.Is(err, bus.ErrInvalidEventType) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidEventType mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("= %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func started(t *testing.T, b *bus.Bus) {
	t.Helper()
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
}

func must[T any](t *testing.T) func(v T, err error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestEnvelopeOnTheWire(t *testing.T) {
	f := newFake()
	var raw *transport.Message
	b := bus.New(f, bus.WithSource("orders-svc"), bus.WithPublishMiddleware(func(next transport.Publisher) transport.Publisher {
		return publisherFunc(func(ctx context.Context, topic string, msgs ...*transport.Message) error {
			raw = msgs[0].Clone()
			return next.Publish(ctx, topic, msgs...)
		})
	}))
	var got bus.Event[OrderCreated]
	must[*bus.Subscription](t)(bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		got = e
		got.Header = maps.Clone(e.Header)
		return nil
	}))
	started(t, b)
	before := time.Now()
	err := bus.Publish(t.Context(), b, OrderCreated{ID: "42", Amount: 7},
		bus.WithKey("cust-1"), bus.WithSubject("order/42"), bus.WithHeader("ce_tenant", "acme"))
	if err != nil {
		t.Fatal(err)
	}

	h := raw.Header
	id, err := uuid.Parse(h[transport.HeaderID])
	if err != nil || id.Version() != 7 {
		t.Errorf("ce_id %q: not a UUIDv7 (%v)", h[transport.HeaderID], err)
	}
	ts, err := time.Parse(time.RFC3339Nano, h[transport.HeaderTime])
	if err != nil || ts.Before(before.Add(-time.Second)) || ts.Location() != time.UTC {
		t.Errorf("ce_time %q: %v", h[transport.HeaderTime], err)
	}
	want := map[string]string{
		transport.HeaderSpecVersion:  "1.0",
		transport.HeaderID:           h[transport.HeaderID],
		transport.HeaderTime:         h[transport.HeaderTime],
		transport.HeaderSource:       "orders-svc",
		transport.HeaderType:         "OrderCreated",
		transport.HeaderSubject:      "order/42",
		transport.HeaderPartitionKey: "cust-1",
		transport.HeaderContentType:  "application/json",
		"ce_tenant":                  "acme",
	}
	if !maps.Equal(h, want) {
		t.Errorf("headers = %v\nwant %v", h, want)
	}
	if raw.ID != h[transport.HeaderID] || raw.Key != "cust-1" || string(raw.Body) != `{"id":"42","amount":7}` {
		t.Errorf("message ID %q Key %q Body %s", raw.ID, raw.Key, raw.Body)
	}

	if got.ID != raw.ID || got.Type != "OrderCreated" || got.Source != "orders-svc" || got.Subject != "order/42" ||
		got.Key != "cust-1" || !got.Time.Equal(ts) || got.Data != (OrderCreated{ID: "42", Amount: 7}) ||
		got.Topic != "OrderCreated" || got.Group != "billing" || got.Attempt != 1 || got.Header["ce_tenant"] != "acme" {
		t.Errorf("handled event = %+v", got)
	}
	if s := b.Stats(); s != (bus.Stats{Published: 1, Handled: 1}) {
		t.Errorf("Stats = %+v", s)
	}
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*transport.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	return f(ctx, topic, msgs...)
}

func TestWithIDAndTime(t *testing.T) {
	b := bus.New(newFake())
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	topic, m, err := bus.NewMessage(b, OrderCreated{ID: "1"}, bus.WithID("evt-1"), bus.WithTime(at))
	if err != nil {
		t.Fatal(err)
	}
	if topic != "OrderCreated" || m.ID != "evt-1" || m.Header[transport.HeaderID] != "evt-1" ||
		m.Header[transport.HeaderTime] != "2026-01-02T02:04:05.000000006Z" {
		t.Errorf("topic %q message %+v", topic, m)
	}
}

func TestSharedTopicDispatch(t *testing.T) {
	f := newFake()
	b := bus.New(f)
	for _, err := range []error{bus.Register[OrderCreated](b, "orders"), bus.Register[OrderShipped](b, "orders")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var billing, shipping []string
	must[*bus.Subscription](t)(bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		billing = append(billing, "created "+e.Data.ID)
		return nil
	}))
	must[*bus.Subscription](t)(bus.Subscribe(b, "shipping", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		shipping = append(shipping, "created "+e.Data.ID)
		return nil
	}))
	must[*bus.Subscription](t)(bus.Subscribe(b, "shipping", func(ctx context.Context, e bus.Event[OrderShipped]) error {
		shipping = append(shipping, "shipped "+e.Data.ID)
		return nil
	}))
	started(t, b)
	// One transport subscription per (topic, group).
	if got, want := f.log(), []string{"subscribe orders/billing", "subscribe orders/shipping"}; !slices.Equal(got, want) {
		t.Errorf("transport calls %v, want %v", got, want)
	}
	ctx := t.Context()
	for _, err := range []error{
		bus.Publish(ctx, b, OrderCreated{ID: "1"}, bus.WithKey("1")),
		bus.Publish(ctx, b, OrderShipped{ID: "1"}, bus.WithKey("1")),
		bus.Publish(ctx, b, OrderCreated{ID: "2"}, bus.WithKey("2")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"created 1", "created 2"}; !slices.Equal(billing, want) {
		t.Errorf("billing %v, want %v", billing, want)
	}
	if want := []string{"created 1", "shipped 1", "created 2"}; !slices.Equal(shipping, want) {
		t.Errorf("shipping %v, want %v", shipping, want)
	}
	// billing does not know OrderShipped: acked and counted.
	if s := b.Stats(); s != (bus.Stats{Published: 3, Handled: 5, Unknown: 1}) {
		t.Errorf("Stats = %+v", s)
	}
	for _, r := range f.results {
		if r.Err != nil {
			t.Errorf("group %s: %v", r.Group, r.Err)
		}
	}
}

func TestFallback(t *testing.T) {
	f := newFake()
	var fell []string
	b := bus.New(f, bus.WithFallback(func(ctx context.Context, m *transport.Message) error {
		fell = append(fell, m.Group+":"+m.Header[transport.HeaderType])
		return nil
	}))
	must[error](t)(nil, bus.Register[OrderShipped](b, "OrderCreated"))
	must[*bus.Subscription](t)(bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error { return nil }))
	started(t, b)
	if err := bus.Publish(t.Context(), b, OrderShipped{ID: "1"}); err != nil {
		t.Fatal(err)
	}
	f.deliver(t.Context(), "OrderCreated", &transport.Message{ID: "x", Header: map[string]string{transport.HeaderType: "Other"}})
	if want := []string{"billing:OrderShipped", "billing:Other"}; !slices.Equal(fell, want) {
		t.Errorf("fallback got %v, want %v", fell, want)
	}
	if s := b.Stats(); s.Fallback != 2 || s.Unknown != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

func TestForeignAndMalformedMessages(t *testing.T) {
	f := newFake()
	b := bus.New(f)
	must[error](t)(nil, bus.Register[OrderCreated](b, "orders"))
	must[error](t)(nil, bus.Register[OrderShipped](b, "shipments"))
	var got []bus.Event[OrderCreated]
	must[*bus.Subscription](t)(bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		got = append(got, e)
		return nil
	}))
	if err := bus.Register[valueNamed](b, "orders"); err != nil {
		t.Fatal(err)
	}
	must[*bus.Subscription](t)(bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[valueNamed]) error { return nil }))
	must[*bus.Subscription](t)(bus.Subscribe(b, "audit", func(ctx context.Context, e bus.Event[OrderShipped]) error { return nil }))
	started(t, b)
	ctx := t.Context()

	t.Run("foreign CloudEvents producer", func(t *testing.T) {
		got = nil
		rs := f.deliver(ctx, "orders", &transport.Message{
			Header: map[string]string{
				transport.HeaderSpecVersion: "1.0", transport.HeaderID: "A234-1234-1234", transport.HeaderSource: "/mycontext",
				transport.HeaderType: "OrderCreated", transport.HeaderTime: "2018-04-05T17:31:00+02:00",
				transport.HeaderPartitionKey: "k1", transport.HeaderContentType: "application/json; charset=utf-8",
			},
			Body: []byte(`{"id":"7","amount":3,"extra":true}`),
		})
		if len(rs) != 1 || rs[0].Err != nil || len(got) != 1 {
			t.Fatalf("results %+v, handled %d", rs, len(got))
		}
		e := got[0]
		if e.ID != "A234-1234-1234" || e.Source != "/mycontext" || e.Key != "k1" || e.Data != (OrderCreated{ID: "7", Amount: 3}) ||
			!e.Time.Equal(time.Date(2018, 4, 5, 15, 31, 0, 0, time.UTC)) {
			t.Errorf("event %+v", e)
		}
	})
	t.Run("CloudEvents sdk-go NATS binding: ce-datacontenttype", func(t *testing.T) {
		// sdk-go's NATS binding writes the content type as
		// ce-datacontenttype (delivered as ce_datacontenttype), no
		// content-type header.
		sdk := func(id, ctype string) *transport.Message {
			return &transport.Message{Header: map[string]string{
				transport.HeaderSpecVersion: "1.0", transport.HeaderID: id, transport.HeaderSource: "/sdk-go",
				transport.HeaderType: "OrderCreated", transport.HeaderDataContentType: ctype,
			}, Body: []byte(`{"id":"8"}`)}
		}
		got = nil
		if rs := f.deliver(ctx, "orders", sdk("sdk-1", "application/json")); len(rs) != 1 || rs[0].Err != nil || len(got) != 1 || got[0].Data.ID != "8" {
			t.Fatalf("JSON in ce_datacontenttype: results %+v, handled %d", rs, len(got))
		}
		rs := f.deliver(ctx, "orders", sdk("sdk-2", "application/protobuf"))
		var de *bus.DecodeError
		if len(rs) != 1 || !errors.As(rs[0].Err, &de) || !strings.Contains(rs[0].Err.Error(), "application/protobuf") {
			t.Fatalf("protobuf in ce_datacontenttype was not read: results %+v", rs)
		}
		both := sdk("sdk-3", "application/protobuf")
		both.Header[transport.HeaderContentType] = "application/json"
		if rs := f.deliver(ctx, "orders", both); len(rs) != 1 || rs[0].Err != nil {
			t.Fatalf("content-type comes first: results %+v", rs)
		}
		env, err := bus.DecodeEnvelope(sdk("sdk-4", "text/plain"))
		if err != nil || env.ContentType != "text/plain" {
			t.Fatalf("DecodeEnvelope: %+v, %v", env, err)
		}
	})
	t.Run("no headers, one type in the group", func(t *testing.T) {
		var seen bus.Event[OrderShipped]
		b2 := bus.New(newFake())
		f2 := b2.Transport().(*fakeTransport)
		must[*bus.Subscription](t)(bus.Subscribe(b2, "g", func(ctx context.Context, e bus.Event[OrderShipped]) error { seen = e; return nil }))
		started(t, b2)
		if err := f2.Publish(ctx, "OrderShipped", &transport.Message{ID: "m1", Key: "k", Body: []byte(`{"id":"9"}`)}); err != nil {
			t.Fatal(err)
		}
		if seen.ID != "m1" || seen.Key != "k" || seen.Type != "" || seen.Data.ID != "9" {
			t.Errorf("event %+v", seen)
		}
	})
	t.Run("no ce_type, several types in the group", func(t *testing.T) {
		rs := f.deliver(ctx, "orders", &transport.Message{ID: "m2", Body: []byte(`{}`)})
		if len(rs) != 1 || !transport.IsPermanent(rs[0].Err) || !errors.Is(rs[0].Err, bus.ErrInvalidEnvelope) ||
			!strings.Contains(rs[0].Err.Error(), "OrderCreated, com.example.value.v1") {
			t.Errorf("results %+v", rs)
		}
	})
	t.Run("body does not decode", func(t *testing.T) {
		rs := f.deliver(ctx, "orders", &transport.Message{ID: "m3", Header: map[string]string{transport.HeaderType: "OrderCreated"}, Body: []byte(`{"amount":"x"}`)})
		var de *bus.DecodeError
		if len(rs) != 1 || !transport.IsPermanent(rs[0].Err) || !errors.As(rs[0].Err, &de) {
			t.Fatalf("results %+v", rs)
		}
		msg := rs[0].Err.Error()
		for _, s := range []string{`"OrderCreated"`, `topic "orders"`, "bus_test.OrderCreated", `"m3"`} {
			if !strings.Contains(msg, s) {
				t.Errorf("error %q does not mention %s", msg, s)
			}
		}
	})
	t.Run("wrong content-type", func(t *testing.T) {
		rs := f.deliver(ctx, "orders", &transport.Message{ID: "m4", Header: map[string]string{transport.HeaderType: "OrderCreated", transport.HeaderContentType: "application/protobuf"}, Body: []byte(`{}`)})
		if len(rs) != 1 || !transport.IsPermanent(rs[0].Err) || !strings.Contains(rs[0].Err.Error(), "application/protobuf") {
			t.Errorf("results %+v", rs)
		}
	})
	t.Run("structured mode", func(t *testing.T) {
		rs := f.deliver(ctx, "orders", &transport.Message{ID: "m7", Header: map[string]string{transport.HeaderType: "OrderCreated", transport.HeaderContentType: "application/cloudevents+json; charset=utf-8"},
			Body: []byte(`{"specversion":"1.0","type":"OrderCreated","data":{"id":"1"}}`)})
		var ee *bus.EnvelopeError
		if len(rs) != 1 || !transport.IsPermanent(rs[0].Err) || !errors.As(rs[0].Err, &ee) || !strings.Contains(ee.Reason, "structured") {
			t.Errorf("results %+v", rs)
		}
	})
	t.Run("malformed ce_time", func(t *testing.T) {
		rs := f.deliver(ctx, "orders", &transport.Message{ID: "m5", Header: map[string]string{transport.HeaderType: "OrderCreated", transport.HeaderTime: "yesterday"}, Body: []byte(`{}`)})
		var ee *bus.EnvelopeError
		if len(rs) != 1 || !transport.IsPermanent(rs[0].Err) || !errors.As(rs[0].Err, &ee) || ee.Attribute != "ce_time" {
			t.Errorf("results %+v", rs)
		}
	})
	t.Run("handler error passes through", func(t *testing.T) {
		boom := errors.New("boom")
		b3 := bus.New(newFake())
		f3 := b3.Transport().(*fakeTransport)
		must[*bus.Subscription](t)(bus.Subscribe(b3, "g", func(ctx context.Context, e bus.Event[OrderShipped]) error { return boom }))
		started(t, b3)
		rs := f3.deliver(ctx, "OrderShipped", &transport.Message{ID: "m6", Body: []byte(`{}`)})
		if len(rs) != 1 || !errors.Is(rs[0].Err, boom) || transport.IsPermanent(rs[0].Err) {
			t.Errorf("results %+v", rs)
		}
		if s := b3.Stats(); s.Failed != 1 {
			t.Errorf("Stats = %+v", s)
		}
	})
}

func TestLifecycle(t *testing.T) {
	ctx := t.Context()
	noop := func(ctx context.Context, e bus.Event[OrderCreated]) error { return nil }
	f := newFake()
	b := bus.New(f)
	must[*bus.Subscription](t)(bus.Subscribe(b, "billing", noop))
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); !errors.Is(err, bus.ErrAlreadyStarted) {
		t.Errorf("Start twice: %v", err)
	}
	// A running (topic, group) takes no new handler: no silent window.
	if err := bus.Register[OrderShipped](b, "OrderCreated"); err != nil {
		t.Fatal(err)
	}
	_, err := bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderShipped]) error { return nil })
	if !errors.Is(err, bus.ErrAlreadyStarted) || !strings.Contains(err.Error(), `"billing"`) {
		t.Errorf("Subscribe to a running (topic, group): %v", err)
	}
	// A new (topic, group) after Start consumes at once.
	var shipped int
	sub := must[*bus.Subscription](t)(bus.Subscribe(b, "shipping", func(ctx context.Context, e bus.Event[OrderCreated]) error { shipped++; return nil }))
	if err := bus.Publish(ctx, b, OrderCreated{ID: "1"}); err != nil || shipped != 1 {
		t.Fatalf("publish: %v, shipping handled %d", err, shipped)
	}
	if err := sub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, b, OrderCreated{ID: "2"}); err != nil || shipped != 1 {
		t.Fatalf("publish after Close: %v, shipping handled %d", err, shipped)
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	want := []string{"subscribe OrderCreated/billing", "subscribe OrderCreated/shipping", "close-sub OrderCreated/shipping",
		"close-sub OrderCreated/billing", "close"}
	if got := f.log(); !slices.Equal(got, want) {
		t.Errorf("transport calls %v\nwant %v", got, want)
	}
	if err := b.Start(ctx); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Start after Shutdown: %v", err)
	}
}

func TestRegister(t *testing.T) {
	b := bus.New(newFake())
	if err := bus.Register[OrderCreated](b, "orders"); err != nil {
		t.Fatal(err)
	}
	if err := bus.Register[OrderCreated](b, "orders"); err != nil {
		t.Errorf("same topic again: %v", err)
	}
	if err := bus.Register[OrderCreated](b, "other"); !errors.Is(err, bus.ErrAlreadyRegistered) ||
		!strings.HasPrefix(err.Error(), "busway: Register bus_test.OrderCreated: ") {
		t.Errorf("another topic: %v, want ErrAlreadyRegistered, prefixed busway: Register and the type", err)
	}
	if err := bus.Register[*OrderCreated](b, "orders"); err != nil {
		t.Errorf("T and *T share a name: %v", err)
	}
	// Used by Publish under its default topic: fixed.
	if _, _, err := bus.NewMessage(b, OrderShipped{}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Register[OrderShipped](b, "orders"); !errors.Is(err, bus.ErrAlreadyRegistered) {
		t.Errorf("after use: %v", err)
	}
	type OrderCreatedV2 struct{}
	if err := bus.Register[OrderCreatedV2](b, "orders"); err != nil {
		t.Errorf("other name, same topic: %v", err)
	}
	if err := bus.Register[Generic[int]](b, "generic"); err != nil {
		t.Errorf("generic with topic: %v", err)
	}
}

type badData struct{ C chan int }

type sameName struct{}

func (sameName) EventType() string { return "OrderCreated" }

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	noop := func(ctx context.Context, e bus.Event[OrderCreated]) error { return nil }
	newBus := func(opts ...bus.Option) *bus.Bus { return bus.New(newFake(), opts...) }
	shut := func() *bus.Bus {
		b := newBus()
		if err := b.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		return b
	}
	runningBilling := func() *bus.Bus {
		b := newBus()
		bus.Subscribe(b, "billing", noop)
		b.Start(ctx)
		t.Cleanup(func() { b.Shutdown(ctx) })
		return b
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()

	tests := []struct {
		name    string
		call    func() error
		is      error
		mention string
	}{
		{"nil transport", func() error { return bus.New(nil).Start(ctx) }, bus.ErrInvalidOptions, "nil transport"},
		{"nil transport on Publish", func() error { return bus.Publish(ctx, bus.New(nil), OrderCreated{}) }, bus.ErrInvalidOptions, "nil transport"},
		{"nil bus", func() error { return bus.Publish(ctx, nil, OrderCreated{}) }, bus.ErrInvalidOptions, "nil *Bus"},
		{"nil bus Subscribe", func() error { _, err := bus.Subscribe(nil, "g", noop); return err }, bus.ErrInvalidOptions, "nil *Bus"},
		{"empty source", func() error { return newBus(bus.WithSource("")).Err() }, bus.ErrInvalidOptions, "empty source"},
		{"source with a line break", func() error { return newBus(bus.WithSource("orders-svc\n")).Err() }, bus.ErrInvalidOptions, "line break"},
		{"source with a line break, at Publish", func() error { return bus.Publish(ctx, newBus(bus.WithSource("orders-svc\n")), OrderCreated{}) }, bus.ErrInvalidOptions, "WithSource"},
		{"nil codec", func() error { return newBus(bus.WithCodec(nil)).Err() }, bus.ErrInvalidOptions, "nil codec"},
		{"nil middleware", func() error { return newBus(bus.WithMiddleware[func(transport.Handler) transport.Handler](nil)).Err() }, bus.ErrInvalidOptions, "middleware #0 is nil"},
		{"nil option", func() error { return newBus(nil).Err() }, bus.ErrInvalidOptions, "nil Option"},
		{"empty group", func() error { _, err := bus.Subscribe(newBus(), "", noop); return err }, bus.ErrInvalidOptions, "Group is required"},
		{"bad group", func() error { _, err := bus.Subscribe(newBus(), "a b", noop); return err }, bus.ErrInvalidOptions, `"a b"`},
		{"nil handler", func() error {
			_, err := bus.Subscribe[OrderCreated](newBus(), "g", nil)
			return err
		}, bus.ErrInvalidOptions, "nil handler"},
		{"negative concurrency", func() error {
			_, err := bus.Subscribe(newBus(), "g", noop, bus.WithConcurrency(-1))
			return err
		}, bus.ErrInvalidOptions, "WithConcurrency(-1)"},
		{"a million handlers", func() error {
			_, err := bus.Subscribe(newBus(), "g", noop, bus.WithConcurrency(1_000_000))
			return err
		}, bus.ErrInvalidOptions, "WithConcurrency(1000000)"},
		{"bad start position", func() error {
			_, err := bus.Subscribe(newBus(), "g", noop, bus.WithStartFrom(7))
			return err
		}, bus.ErrInvalidOptions, "WithStartFrom"},
		{"conflicting concurrency", func() error {
			b := newBus()
			bus.Register[OrderShipped](b, "OrderCreated")
			bus.Subscribe(b, "g", noop, bus.WithConcurrency(2))
			_, err := bus.Subscribe(b, "g", func(ctx context.Context, e bus.Event[OrderShipped]) error { return nil }, bus.WithConcurrency(4))
			return err
		}, bus.ErrInvalidOptions, "conflicts"},
		{"second handler of a type in a group", func() error {
			b := newBus()
			bus.Subscribe(b, "g", noop)
			_, err := bus.Subscribe(b, "g", noop)
			return err
		}, bus.ErrAlreadyRegistered, "already has a handler"},
		{"empty topic in Register", func() error { return bus.Register[OrderCreated](newBus(), "") }, transport.ErrInvalidTopic, "empty"},
		{"bad topic in Register", func() error { return bus.Register[OrderCreated](newBus(), "orders/eu") }, transport.ErrInvalidTopic, `'/'`},
		{"unnamed type", func() error { return bus.Publish(ctx, newBus(), []int{1}) }, bus.ErrInvalidEventType, "has no name"},
		{"type name not a topic", func() error { return bus.Publish(ctx, newBus(), Generic[int]{}) }, transport.ErrInvalidTopic, "Register the type"},
		{"two Go types, one name, one topic", func() error {
			b := newBus()
			bus.Register[OrderCreated](b, "orders")
			return bus.Register[sameName](b, "orders")
		}, bus.ErrAlreadyRegistered, "already Go type"},
		{"subscribe to a running group", func() error {
			b := runningBilling()
			bus.Register[OrderShipped](b, "OrderCreated")
			_, err := bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderShipped]) error { return nil })
			return err
		}, bus.ErrAlreadyStarted, "already consuming"},
		{"reserved header", func() error { return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithHeader("ce_id", "x")) }, bus.ErrInvalidOptions, "ce_id"},
		{"empty header name", func() error { return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithHeader("", "x")) }, bus.ErrInvalidOptions, "empty header name"},
		// What some transport (NATS) would refuse or change: refused on
		// every transport, so that a test on chanbus finds it.
		{"header name with a space", func() error { return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithHeader("x tenant", "a")) }, bus.ErrInvalidOptions, `"x tenant"`},
		{"header name NATS's server obeys", func() error {
			return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithHeader("Nats-Expected-Stream", "a"))
		}, bus.ErrInvalidOptions, "reserved by NATS"},
		{"header name in NATS's ce- spelling", func() error { return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithHeader("ce-tenant", "a")) }, bus.ErrInvalidOptions, "ce_tenant"},
		{"header value with a line break", func() error {
			return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithHeader("x-tenant", "a\r\nInjected: 1"))
		}, bus.ErrInvalidOptions, "line break"},
		{"key with white space at its end", func() error { return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithKey("42 ")) }, bus.ErrInvalidOptions, "WithKey"},
		{"subject with a line break", func() error { return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithSubject("a\nb")) }, bus.ErrInvalidOptions, "WithSubject"},
		{"ID with white space at its start", func() error { return bus.Publish(ctx, newBus(), OrderCreated{}, bus.WithID(" id")) }, bus.ErrInvalidOptions, "WithID"},
		{"unencodable value", func() error { return bus.Publish(ctx, newBus(), badData{}, bus.WithKey("k")) }, nil, "encode"},
		{"cancelled context", func() error { return bus.Publish(cctx, newBus(), OrderCreated{}) }, context.Canceled, "context canceled"},
		{"publish after Shutdown", func() error { return bus.Publish(ctx, shut(), OrderCreated{}) }, transport.ErrClosed, "shut down"},
		{"subscribe after Shutdown", func() error { _, err := bus.Subscribe(shut(), "g", noop); return err }, transport.ErrClosed, "shut down"},
		{"start after Shutdown", func() error { return shut().Start(ctx) }, transport.ErrClosed, "after Shutdown"},
		{"encode envelope, key with a line break", func() error {
			_, err := bus.EncodeEnvelope(bus.Envelope{Type: "t", Source: "s", Key: "k\n"}, nil)
			return err
		}, bus.ErrInvalidEnvelope, "Key"},
		{"encode envelope, header name with a space", func() error {
			_, err := bus.EncodeEnvelope(bus.Envelope{Type: "t", Source: "s", Header: map[string]string{"x a": "v"}}, nil)
			return err
		}, bus.ErrInvalidEnvelope, `"x a"`},
		{"encode envelope, padded header value", func() error {
			_, err := bus.EncodeEnvelope(bus.Envelope{Type: "t", Source: "s", Header: map[string]string{"x-a": " v"}}, nil)
			return err
		}, bus.ErrInvalidEnvelope, `"x-a"`},
		{"encode envelope without type", func() error { _, err := bus.EncodeEnvelope(bus.Envelope{Source: "s"}, nil); return err }, bus.ErrInvalidEnvelope, "Type"},
		{"decode nil message", func() error { _, err := bus.DecodeEnvelope(nil); return err }, transport.ErrInvalidMessage, "nil message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil {
				t.Fatal("no error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestEncodeDecodeEnvelope(t *testing.T) {
	at := time.Date(2026, 5, 6, 7, 8, 9, 123, time.UTC)
	e := bus.Envelope{ID: "id-1", Type: "t", Source: "s", Subject: "sub", Time: at, Key: "k", ContentType: "application/json",
		DataSchema: "https://example.com/s.json", Header: map[string]string{"x-a": "1", transport.HeaderID: "ignored"}}
	m, err := bus.EncodeEnvelope(e, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := bus.DecodeEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	d.Header, e.Header = nil, nil
	e.SpecVersion = "1.0"
	if !reflect.DeepEqual(d, e) {
		t.Errorf("decoded %+v\nwant    %+v", d, e)
	}
	if m.Header["x-a"] != "1" || m.Header[transport.HeaderID] != "id-1" {
		t.Errorf("headers %v", m.Header)
	}
}

// A named middleware type (as package middleware has) passes as values and
// as a slice; function literals too (in a call of their own: Go infers one
// type per call).
type namedMW func(transport.Handler) transport.Handler

func TestNamedMiddlewareTypes(t *testing.T) {
	var order []string
	mk := func(name string) namedMW {
		return func(next transport.Handler) transport.Handler {
			return func(ctx context.Context, m *transport.Message) error {
				order = append(order, name)
				return next(ctx, m)
			}
		}
	}
	chain := []namedMW{mk("a"), mk("b")}
	b := bus.New(newFake(), bus.WithMiddleware(chain...), bus.WithMiddleware(mk("c")), bus.WithMiddleware(func(next transport.Handler) transport.Handler {
		return func(ctx context.Context, m *transport.Message) error { order = append(order, "d"); return next(ctx, m) }
	}), bus.WithHandlerMiddleware(mk("e")))
	must[*bus.Subscription](t)(bus.Subscribe(b, "g", func(ctx context.Context, e bus.Event[OrderCreated]) error {
		order = append(order, "handler")
		return nil
	}, bus.WithGroupMiddleware(mk("f"))))
	started(t, b)
	if err := bus.Publish(t.Context(), b, OrderCreated{}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "c", "d", "e", "f", "handler"}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
}
