package reliability

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/busway/busway/internal/syncbuf"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/busway/busway"
	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/kafka"
	"github.com/busway/busway/transport/nats"
)

// natsServer starts an embedded JetStream server on 127.0.0.1 (random port)
// with opts' authentication and TLS.
func natsServer(t *testing.T, opts *server.Options) string {
	t.Helper()
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir = "127.0.0.1", server.RANDOM_PORT, true, t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return s.Addr().(*net.TCPAddr).String()
}

// kafkaCluster starts a one-broker kfake cluster with opts.
func kafkaCluster(t *testing.T, opts ...kfake.Opt) string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.DefaultNumPartitions(1),
		kfake.GroupMinSessionTimeout(500 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// kafkaOpts are the kafka URL options of these tests: short group timings
// for kfake.
const kafkaOpts = "session_timeout=3s&heartbeat_interval=100ms&rebalance_timeout=5s&drain_timeout=3s&fetch_max_wait=100ms&commit_interval=100ms&dial_timeout=3s"

type credCase struct {
	name    string
	url     string            // right credentials
	wrong   map[string]string // what is wrong -> URL
	secrets []string
}

func credCases(t *testing.T) []credCase {
	const (
		natsPW    = "nats-Pw-4f1c9e2a"
		natsToken = "nats-Tok-8b3d7a61"
		tlsPW     = "tls-Pw-2e9f0c44"
		scramPW   = "scram-Pw-7a5e1b93"
		tlsScram  = "scramtls-Pw-c0ffee17"
	)
	var cases []credCase

	addr := natsServer(t, &server.Options{Username: "app", Password: natsPW})
	cases = append(cases, credCase{name: "nats user/password", secrets: []string{natsPW},
		url: "nats://app:" + natsPW + "@" + addr + "?storage=memory",
		wrong: map[string]string{
			"wrong password": "nats://app:x" + natsPW + "@" + addr + "?storage=memory",
			"no credentials": "nats://" + addr + "?storage=memory",
		}})

	addr = natsServer(t, &server.Options{Authorization: natsToken})
	cases = append(cases, credCase{name: "nats token", secrets: []string{natsToken},
		url: "nats://" + natsToken + "@" + addr + "?storage=memory",
		wrong: map[string]string{
			"wrong token":          "nats://x" + natsToken + "@" + addr + "?storage=memory",
			"wrong token (option)": "nats://" + addr + "?storage=memory&token=y" + natsToken,
		}})

	ca, other := newCA(t, "nats"), newCA(t, "other")
	addr = natsServer(t, &server.Options{Username: "app", Password: tlsPW, TLS: true, TLSConfig: ca.serverTLS(), TLSTimeout: 5})
	cases = append(cases, credCase{name: "nats TLS", secrets: []string{tlsPW},
		url: "nats://app:" + tlsPW + "@" + addr + "?storage=memory&tls_ca=" + url.QueryEscape(ca.caFile),
		wrong: map[string]string{
			"untrusted server certificate": "nats://app:" + tlsPW + "@" + addr + "?storage=memory&tls_ca=" + url.QueryEscape(other.caFile),
			"wrong password over TLS":      "nats://app:z" + tlsPW + "@" + addr + "?storage=memory&tls_ca=" + url.QueryEscape(ca.caFile),
		}})

	addr = kafkaCluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "app", scramPW))
	cases = append(cases, credCase{name: "kafka SASL/SCRAM-SHA-512", secrets: []string{scramPW},
		url: "kafka://app:" + scramPW + "@" + addr + "?sasl=scram-sha-512&" + kafkaOpts,
		wrong: map[string]string{
			"wrong password": "kafka://app:x" + scramPW + "@" + addr + "?sasl=scram-sha-512&" + kafkaOpts,
			"wrong user":     "kafka://nobody:" + scramPW + "@" + addr + "?sasl=scram-sha-512&" + kafkaOpts,
		}})

	kca := newCA(t, "kafka")
	addr = kafkaCluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "app", tlsScram), kfake.TLS(kca.serverTLS()))
	cases = append(cases, credCase{name: "kafka TLS + SASL/SCRAM-SHA-256", secrets: []string{tlsScram},
		url: "kafka://app:" + tlsScram + "@" + addr + "?sasl=scram-sha-256&tls_ca=" + url.QueryEscape(kca.caFile) + "&" + kafkaOpts,
		wrong: map[string]string{
			"untrusted server certificate": "kafka://app:" + tlsScram + "@" + addr + "?sasl=scram-sha-256&tls_ca=" + url.QueryEscape(other.caFile) + "&" + kafkaOpts,
			"wrong password over TLS":      "kafka://app:q" + tlsScram + "@" + addr + "?sasl=scram-sha-256&tls_ca=" + url.QueryEscape(kca.caFile) + "&" + kafkaOpts,
		}})
	return cases
}

type Payment struct {
	OrderID string `json:"order_id"`
}

// TestCredentials: on the embedded NATS server (user/password, token, TLS
// with certificates made in the test) and on kfake (SASL/SCRAM, TLS), the
// right credentials carry an event through the recommended middleware
// chain to the dead-letter topic, and wrong ones fail at once with an
// error matching transport.ErrAuthentication. No credential appears in any
// output: errors, logs (Debug level), span names and attributes, metric
// data, the dead letter's headers and body, the URL's printed form
// (transport.Redact) or the printed Config (%v, %+v, %#v).
func TestCredentials(t *testing.T) {
	for _, c := range credCases(t) {
		t.Run(c.name, func(t *testing.T) {
			var outputs []string // every text the stack produced
			logs := &syncbuf.Buffer{}
			log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			mux := busway.NewMux(busway.WithLogger(log))

			for what, raw := range c.wrong {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				start := time.Now()
				tr, err := mux.Open(ctx, raw)
				took := time.Since(start)
				deadline := ctx.Err() != nil
				cancel()
				if err == nil {
					tr.Close()
					t.Fatalf("%s: Open succeeded", what)
				}
				if deadline || errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("%s: Open ran into its 1 minute deadline (%v): not a fast failure: %v", what, took, err)
				}
				if !errors.Is(err, transport.ErrAuthentication) {
					t.Errorf("%s: Open = %v, want an error matching transport.ErrAuthentication", what, err)
				}
				t.Logf("%s: failed after %v: %v", what, took.Round(time.Millisecond), err)
				outputs = append(outputs, err.Error(), fmt.Sprintf("%+v %#v", err, err))
			}

			u, err := url.Parse(c.url)
			if err != nil {
				t.Fatal(err)
			}
			outputs = append(outputs, transport.Redact(u), transport.RedactRaw(c.url))
			var cfg any
			switch u.Scheme {
			case nats.Scheme:
				cfg, err = nats.ConfigFromURL(u)
			case kafka.Scheme:
				cfg, err = kafka.ConfigFromURL(u)
			}
			if err != nil {
				t.Fatal(err)
			}
			outputs = append(outputs, fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg))
			log.Info("config", "cfg", cfg)

			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			tr, err := mux.Open(ctx, c.url)
			if err != nil {
				t.Fatalf("Open with the right credentials: %v", err)
			}
			defer tr.Close()

			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer tp.Shutdown(context.Background())
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer mp.Shutdown(context.Background())
			topts := middleware.TracingOptions{TracerProvider: tp, Propagator: propagation.TraceContext{}}
			mopts := middleware.MetricsOptions{MeterProvider: mp}

			b := bus.New(tr, bus.WithSource("payments"), bus.WithLogger(log),
				bus.WithPublishMiddleware(middleware.PublishTracing(topts), middleware.PublishMetrics(mopts)),
				bus.WithMiddleware(middleware.Tracing(topts), middleware.Metrics(mopts), middleware.Logging(log, middleware.LoggingOptions{LogSuccess: true}),
					middleware.DeadLetter(tr, middleware.DeadLetterOptions{Logger: log}),
					middleware.Retry(middleware.RetryOptions{MaxAttempts: 2, InitialInterval: time.Millisecond}),
					middleware.Recover()))
			topic := "payments-" + strings.ReplaceAll(strings.ToLower(strings.Fields(c.name)[0]), "/", "") + fmt.Sprint(time.Now().UnixNano())
			if err := bus.Register[Payment](b, topic); err != nil {
				t.Fatal(err)
			}
			if _, err := bus.Subscribe(b, "billing", func(context.Context, bus.Event[Payment]) error {
				return bus.Permanent(errors.New("card declined"))
			}, bus.WithStartFrom(transport.StartEarliest)); err != nil {
				t.Fatal(err)
			}
			dead := make(chan *transport.Message, 1)
			dsub, err := tr.Subscribe(ctx, middleware.DLQTopic(topic), func(_ context.Context, m *transport.Message) error {
				select {
				case dead <- m.Clone():
				default:
				}
				return nil
			}, transport.SubscribeOptions{Group: "inspect", StartFrom: transport.StartEarliest})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if err := bus.Publish(ctx, b, Payment{OrderID: "o-1"}, bus.WithKey("o-1")); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			var d *transport.Message
			select {
			case d = <-dead:
			case <-ctx.Done():
				t.Fatal("no dead letter within 90 s")
			}
			if d.Header[middleware.HeaderDLQError] == "" {
				t.Errorf("dead letter without its reason: %v", d.Header)
			}
			outputs = append(outputs, fmt.Sprintf("%+v", d), fmt.Sprintf("%v", d.Header), string(d.Body))
			if err := dsub.Close(ctx); err != nil {
				t.Error(err)
			}
			if err := b.Shutdown(ctx); err != nil {
				t.Error(err)
			}
			if err := tr.Close(); err != nil {
				t.Error(err)
			}

			for _, s := range rec.Ended() {
				outputs = append(outputs, s.Name(), fmt.Sprintf("%v %v %v %v", s.Attributes(), s.Events(), s.Status(), s.Links()))
			}
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(context.Background(), &rm); err != nil {
				t.Fatal(err)
			}
			outputs = append(outputs, fmt.Sprintf("%+v", rm))
			outputs = append(outputs, logs.String())
			if len(rec.Ended()) == 0 || len(rm.ScopeMetrics) == 0 || logs.String() == "" {
				t.Fatalf("no spans (%d), metrics (%d) or logs (%d bytes) to check", len(rec.Ended()), len(rm.ScopeMetrics), len(logs.String()))
			}
			total := 0
			for _, out := range outputs {
				total += len(out)
				for _, s := range c.secrets {
					if i := strings.Index(out, s); i >= 0 {
						t.Errorf("the secret %q shows in an output: ...%s...", s, out[max(0, i-120):min(len(out), i+len(s)+40)])
					}
				}
			}
			t.Logf("%d outputs, %d bytes (%d spans, logs %d bytes) checked: no secret in any", len(outputs), total, len(rec.Ended()), len(logs.String()))
		})
	}
}
