package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// telemetry is what the service hands the library to report through: an
// OpenTelemetry SDK MeterProvider whose one reader is the Prometheus
// exporter, on a registry of the service's own (not the process-wide
// default, so that servers started side by side in one test binary do not
// collide), and a TracerProvider.
type telemetry struct {
	meterProvider  *sdkmetric.MeterProvider
	tracerProvider trace.TracerProvider
	registry       *prometheus.Registry
}

func newTelemetry() (*telemetry, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	return &telemetry{
		meterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)),
		// Traces go nowhere in this example: a service that exports them
		// puts an SDK TracerProvider with its exporter here.
		tracerProvider: noop.NewTracerProvider(),
		registry:       reg,
	}, nil
}

// metricsHandler serves the registry in the Prometheus text format.
func (t *telemetry) metricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// configureRedis is the hook ghlcache.Open calls with its Redis client:
// go-redis's OpenTelemetry tracing and its connection-pool metrics, on the
// service's providers. Commands are traced without their arguments
// (WithDBStatement(false)): they carry cached values, which have no place
// in a trace.
func (t *telemetry) configureRedis(rdb redis.UniversalClient) error {
	if err := redisotel.InstrumentTracing(rdb,
		redisotel.WithTracerProvider(t.tracerProvider),
		redisotel.WithDBStatement(false)); err != nil {
		return fmt.Errorf("redis tracing: %w", err)
	}
	if err := redisotel.InstrumentMetrics(rdb, redisotel.WithMeterProvider(t.meterProvider)); err != nil {
		return fmt.Errorf("redis metrics: %w", err)
	}
	return nil
}

// shutdown flushes and stops the MeterProvider.
func (t *telemetry) shutdown(ctx context.Context) error {
	if err := t.meterProvider.Shutdown(ctx); err != nil {
		return fmt.Errorf("meter provider shutdown: %w", err)
	}
	return nil
}
