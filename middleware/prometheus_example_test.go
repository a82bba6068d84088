package middleware_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/middleware"
	"github.com/busway/busway/transport/chanbus"
)

type OrderPlaced struct {
	ID string `json:"id"`
}

// Exporting busway's metrics to Prometheus: the OpenTelemetry Prometheus
// exporter is a reader of an SDK MeterProvider, which the Metrics and
// PublishMetrics middleware are given; promhttp serves the exporter's
// registry at /metrics. A service would listen with
// http.ListenAndServe(":9464", mux); here a test server is scraped once.
func Example_prometheus() {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		panic(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer mp.Shutdown(ctx)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	ct := chanbus.New()
	mopts := middleware.MetricsOptions{MeterProvider: mp}
	b := bus.New(ct,
		bus.WithMiddleware(middleware.Metrics(mopts)),
		bus.WithPublishMiddleware(middleware.PublishMetrics(mopts)))
	bus.Subscribe(b, "billing", func(ctx context.Context, e bus.Event[OrderPlaced]) error { return nil })
	b.Start(ctx)
	for _, id := range []string{"1", "2", "3"} {
		bus.Publish(ctx, b, OrderPlaced{ID: id})
	}
	ct.WaitIdle(ctx)
	b.Shutdown(ctx)

	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, line := range scrape(srv.URL+"/metrics", "messaging_client_consumed_messages_total", "messaging_client_sent_messages_total") {
		fmt.Println(line)
	}
	// Output:
	// messaging_client_consumed_messages_total{busway_outcome="success",messaging_consumer_group_name="billing",messaging_destination_name="OrderPlaced",messaging_operation_name="process",messaging_system="chanbus"} 3
	// messaging_client_sent_messages_total{messaging_destination_name="OrderPlaced",messaging_operation_name="send",messaging_operation_type="send",messaging_system="chanbus"} 3
}

// scrape GETs url and returns the samples of the named metrics, without
// the otel_scope_* labels (which carry the library version).
func scrape(url string, names ...string) []string {
	resp, err := http.Get(url)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, n := range names {
			if strings.HasPrefix(line, n+"{") {
				out = append(out, dropScopeLabels(line))
			}
		}
	}
	return out
}

func dropScopeLabels(line string) string {
	open, end := strings.IndexByte(line, '{'), strings.LastIndexByte(line, '}')
	var keep []string
	for _, l := range strings.Split(line[open+1:end], ",") {
		if !strings.HasPrefix(l, "otel_scope_") {
			keep = append(keep, l)
		}
	}
	return line[:open+1] + strings.Join(keep, ",") + line[end:]
}
