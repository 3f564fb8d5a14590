package integration_test

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// BenchmarkFetchHitTelemetry is the cost of telemetry on the hit path: a
// Redis hit and a near hit, with no providers (the default), with the
// OpenTelemetry SDK's metrics (a manual reader, never collected), and with
// metrics and traces (hits have no span, so traces add nothing). Compare
// with cachelayer's BenchmarkFetchHit and BenchmarkFetchNearHit.
func BenchmarkFetchHitTelemetry(b *testing.B) {
	setups := []struct {
		name string
		cfg  func(*cachelayer.Config)
	}{
		{"off", func(*cachelayer.Config) {}},
		{"metrics", func(c *cachelayer.Config) {
			c.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		}},
		{"metrics+traces", func(c *cachelayer.Config) {
			c.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			c.TracerProvider = sdktrace.NewTracerProvider()
		}},
	}
	for _, near := range []bool{false, true} {
		for _, s := range setups {
			name := "redis/" + s.name
			if near {
				name = "near/" + s.name
			}
			b.Run(name, func(b *testing.B) {
				ctx := context.Background()
				cfg := cachelayer.Config{Prefix: testsvc.Prefix(b), OpTimeout: time.Second}
				s.cfg(&cfg)
				c := cachelayer.New(testsvc.Redis(b), &cfg)
				b.Cleanup(func() { _ = c.Close() })
				c.SetDomain("bench:", "bench")
				if near {
					if err := c.EnableNear("bench:"); err != nil {
						b.Fatal(err)
					}
					if !c.WaitNear(ctx) {
						b.Fatal("near tier not serving")
					}
				}
				load := func(context.Context) (int64, error) { return 1, nil }
				if _, err := cachelayer.Fetch(ctx, c, "bench:1", time.Hour, load); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if _, err := cachelayer.Fetch(ctx, c, "bench:1", time.Hour, load); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if near && c.Stats().NearHits == 0 {
					b.Fatal("no near hits")
				}
			})
		}
	}
}
