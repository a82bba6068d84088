package middleware_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/chanbus"
)

// BenchmarkChain measures the per-message cost of the recommended chain on
// chanbus beside the bare handler: each op publishes one message; the
// benchmark ends when the handler has seen all of them.
//
//   - bare: the handler alone.
//   - recommended-chain: Tracing > Metrics > DeadLetter > Idempotent (memory)
//     > Retry > Timeout > Limit > Recover, with the global (no-op) OTel
//     providers, as in a program that has not configured OTel.
//   - recommended-chain-otel-sdk: the same with the OTel SDK recording every
//     span (no exporter) and a manual metric reader.
func BenchmarkChain(b *testing.B) {
	sdkChain := func(b *testing.B, pub transport.Publisher) middleware.Middleware {
		tp := sdktrace.NewTracerProvider()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() {
			_ = tp.Shutdown(context.Background())
			_ = mp.Shutdown(context.Background())
		})
		return middleware.Chain(
			middleware.Tracing(middleware.TracingOptions{TracerProvider: tp, Propagator: propagation.TraceContext{}}),
			middleware.Metrics(middleware.MetricsOptions{MeterProvider: mp}),
			recommended(pub, middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.NewSemaphore(64), 3),
		)
	}
	cases := []struct {
		name  string
		chain func(b *testing.B, pub transport.Publisher) middleware.Middleware
	}{
		{"bare", func(*testing.B, transport.Publisher) middleware.Middleware { return middleware.Chain() }},
		{"recommended-chain", func(_ *testing.B, pub transport.Publisher) middleware.Middleware {
			return recommended(pub, middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.NewSemaphore(64), 3)
		}},
		{"recommended-chain-otel-sdk", sdkChain},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			tb := chanbus.New()
			defer tb.Close()
			var n atomic.Int64
			target := int64(b.N)
			done := make(chan struct{})
			h := bc.chain(b, tb)(func(context.Context, *transport.Message) error {
				if n.Add(1) == target {
					close(done)
				}
				return nil
			})
			sub, err := tb.Subscribe(context.Background(), "bench", h, transport.SubscribeOptions{Group: "g"})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close(context.Background())
			ctx := context.Background()
			body := []byte(`{"id":"42","amount":1250}`)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := tb.Publish(ctx, "bench", &transport.Message{ID: strconv.Itoa(i), Body: body}); err != nil {
					b.Fatal(err)
				}
			}
			<-done
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
