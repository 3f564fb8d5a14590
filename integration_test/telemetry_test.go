package integration_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

// TestTelemetryExactCounts drives a scripted sequence — misses, hits, a
// not-found, a corrupt entry, a fill voided by an invalidation, an
// invalidation, a Redis outage with its fallbacks, a failed invalidation
// and the bypass read it causes — through the cached repositories with the
// OpenTelemetry SDK's in-memory reader and span recorder, and asserts the
// exact value of every counter, histogram count and gauge, and the spans.
func TestTelemetryExactCounts(t *testing.T) {
	ctx := testContext(t, time.Minute)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	opts, err := redis.ParseURL(testsvc.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := testsvc.StartProxy(t, opts.Addr)
	direct := testsvc.Redis(t)
	rdb := boundedClient(t, proxy.Addr)
	prefix := testsvc.Prefix(t)
	cache := cachelayer.New(rdb, &cachelayer.Config{
		Prefix: prefix, MeterProvider: mp, TracerProvider: tp,
		BreakerFailures: 1, BreakerCooldown: time.Hour, // the first failure opens it, and it stays open
	})
	t.Cleanup(func() { _ = cache.Close() })
	pool := testsvc.NewPoolOn(t, testsvc.IsolatedDatabaseURL(t), nil) // its own outbox tables: exact depths
	// Sweepers that never run on their own during the test: every delete
	// counted is the write path's.
	cr := credits.NewCached(credits.NewStore(pool), cache, &credits.CachedConfig{SweepInterval: time.Hour, SweepIdle: time.Hour})
	t.Cleanup(func() { _ = cr.Close() })
	wf := workflows.NewCached(workflows.NewStore(pool), cache, &workflows.CachedConfig{SweepInterval: time.Hour, SweepIdle: time.Hour, NoNearCache: true})
	t.Cleanup(func() { _ = wf.Close() })

	u1, u2, u3 := testsvc.NewID(), testsvc.NewID(), testsvc.NewID()
	balance := func(u int64) {
		t.Helper()
		if _, err := cr.Balance(ctx, u, credits.Type("main")); err != nil {
			t.Fatalf("Balance(%d): %v", u, err)
		}
	}
	// Misses and hits.
	balance(u1) // miss, load
	balance(u1) // hit
	balance(u1) // hit
	// A not-found: the miss fills a marker, the next read hits it.
	missing := testsvc.NewID()
	for range 2 {
		if _, err := wf.Definition(ctx, missing); !errors.Is(err, workflows.ErrNotFound) {
			t.Fatalf("Definition(missing) = %v, want ErrNotFound", err)
		}
	}
	// A corrupt entry: a miss that replaces it, and a load.
	if err := direct.Set(ctx, cache.FullKey(credits.Key(u3, "main")), "garbage", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	balance(u3)
	// A fill voided by an invalidation while its load runs: the load is
	// held until the delete has voided the lease, then loads again.
	inLoad, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		_, err := cachelayer.Fetch(ctx, cache, "other:voided", time.Minute, func(context.Context) (string, error) {
			once.Do(func() { close(inLoad); <-release })
			return "v", nil
		})
		done <- err
	}()
	<-inLoad
	if err := cache.Delete(ctx, "other:voided"); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// An invalidation on the write path, then a miss.
	if _, err := cr.Add(ctx, credits.Change{UserID: u1, Type: "main", Amount: 10, IdempotencyKey: fmt.Sprintf("tel-%d", u1)}); err != nil {
		t.Fatal(err)
	}
	balance(u1) // miss, load
	// The outbox marks the change's row done a moment after its delete
	// (in batches): wait for that, so that the depth below is u2's row.
	for {
		st, err := cr.OutboxStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Depth == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("outbox depth %d after the delete", st.Depth)
		case <-time.After(10 * time.Millisecond):
		}
	}

	// Redis cut off: the first read fails and opens the breaker; the second
	// finds it open. Both are fallbacks served by their loader.
	proxy.Block()
	balance(u2) // fallback (Redis failed)
	balance(u1) // fallback (breaker open)
	// A change whose delete cannot reach Redis; the key's next read skips
	// Redis until the invalidation is done.
	if _, err := cr.Add(ctx, credits.Change{UserID: u2, Type: "main", Amount: 5, IdempotencyKey: fmt.Sprintf("tel-%d", u2)}); err != nil {
		t.Fatal(err)
	}
	balance(u2) // bypass

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	got := flatten(rm)
	st := cache.Stats()
	want := map[string]int64{
		"ghlcache.cache.requests{credits,hit}":         2,
		"ghlcache.cache.requests{credits,miss}":        3,
		"ghlcache.cache.requests{credits,fallback}":    2,
		"ghlcache.cache.requests{credits,bypass}":      1,
		"ghlcache.cache.requests{workflows,miss}":      1,
		"ghlcache.cache.requests{workflows,not_found}": 1,
		"ghlcache.cache.requests{other,miss}":          1,
		// Histograms: one sample per request and per load.
		"ghlcache.cache.fetch.duration{credits,hit}":         2,
		"ghlcache.cache.fetch.duration{credits,miss}":        3,
		"ghlcache.cache.fetch.duration{credits,fallback}":    2,
		"ghlcache.cache.fetch.duration{credits,bypass}":      1,
		"ghlcache.cache.fetch.duration{workflows,miss}":      1,
		"ghlcache.cache.fetch.duration{workflows,not_found}": 1,
		"ghlcache.cache.fetch.duration{other,miss}":          1,
		"ghlcache.cache.loads{credits}":                      6,
		"ghlcache.cache.loads{workflows}":                    1,
		"ghlcache.cache.loads{other}":                        2,
		"ghlcache.cache.load.duration{credits,ok}":           6,
		"ghlcache.cache.load.duration{workflows,ok}":         1,
		"ghlcache.cache.load.duration{other,ok}":             2,
		"ghlcache.cache.fills.rejected{other}":               1,
		"ghlcache.cache.corrupt{credits}":                    1,
		"ghlcache.cache.invalidations{credits}":              1,
		"ghlcache.cache.invalidations{other}":                1,
		"ghlcache.cache.invalidation.failures{credits}":      1,
		"ghlcache.cache.redis.errors{}":                      st.RedisErrors,
		"ghlcache.cache.breakers.open{}":                     1,
		"ghlcache.cache.near.entries{}":                      0,
		"ghlcache.outbox.pending{credits}":                   1,
		"ghlcache.outbox.pending{workflows}":                 0,
		"ghlcache.outbox.depth{credits}":                     1, // u2's row waits for Redis
		"ghlcache.outbox.depth{workflows}":                   0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && v != 0 && !strings.HasPrefix(k, "ghlcache.outbox.oldest_age") {
			t.Errorf("unexpected series %s = %d", k, v)
		}
	}
	if st.RedisErrors < 1 {
		t.Errorf("Stats.RedisErrors = %d, want ≥ 1 (the read that opened the breaker)", st.RedisErrors)
	}
	// The metrics agree with Stats, which counts the same events.
	if n := got["ghlcache.cache.requests{credits,hit}"] + got["ghlcache.cache.requests{workflows,not_found}"]; n != st.Hits {
		t.Errorf("hit requests %d, Stats.Hits %d", n, st.Hits)
	}
	if n := got["ghlcache.cache.requests{credits,fallback}"]; n != st.Fallbacks {
		t.Errorf("fallback requests %d, Stats.Fallbacks %d", n, st.Fallbacks)
	}
	if n := got["ghlcache.cache.loads{credits}"] + got["ghlcache.cache.loads{workflows}"] + got["ghlcache.cache.loads{other}"]; n != st.Loads {
		t.Errorf("loads %d, Stats.Loads %d", n, st.Loads)
	}

	// Spans: one per request that was not a hit (2 hits and the not-found
	// hit have none), one per load, each flight load a child of its Fetch.
	var fetches, loads int
	byID := map[string]tracetest.SpanStub{}
	for _, s := range spans.GetSpans() {
		byID[s.SpanContext.SpanID().String()] = s
	}
	var voided bool
	for _, s := range spans.GetSpans() {
		switch s.Name {
		case "ghlcache.Fetch":
			fetches++
			for _, e := range s.Events {
				voided = voided || e.Name == "fill.rejected"
			}
		case "ghlcache.load":
			loads++
			if p, ok := byID[s.Parent.SpanID().String()]; !ok || p.Name != "ghlcache.Fetch" {
				t.Errorf("load span without its Fetch span as parent (parent %v)", s.Parent.SpanID())
			}
		}
	}
	if fetches != 8 || loads != 9 {
		t.Errorf("%d Fetch spans and %d load spans, want 8 (the calls that were not hits) and 9 (one per load)", fetches, loads)
	}
	if !voided {
		t.Error("no Fetch span has the fill.rejected event of the voided fill")
	}
}

// flatten maps each data point to "name{attribute values in key order}" →
// its value (counters, gauges) or its count (histograms).
func flatten(rm metricdata.ResourceMetrics) map[string]int64 {
	out := map[string]int64{}
	label := func(name string, set attribute.Set) string {
		var vals []string
		for _, kv := range set.ToSlice() {
			vals = append(vals, kv.Value.String())
		}
		return name + "{" + strings.Join(vals, ",") + "}"
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[label(m.Name, p.Attributes)] = p.Value
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out[label(m.Name, p.Attributes)] = p.Value
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					out[label(m.Name, p.Attributes)] = int64(p.Value)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[label(m.Name, p.Attributes)] = int64(p.Count)
				}
			}
		}
	}
	return out
}

// TestTelemetryNearHits reads a definition through the near tier until it
// answers from memory, and asserts that every call is one request of the
// workflows domain and that the near_hit requests are exactly Stats's
// NearHits (FetchNear, the repository's first step, records them).
func TestTelemetryNearHits(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), MeterProvider: mp})
	t.Cleanup(func() { _ = cache.Close() })
	wf := workflows.NewCached(workflows.NewStore(testsvc.Pool(t)), cache, nil)
	t.Cleanup(func() { _ = wf.Close() })
	if !cache.WaitNear(ctx) {
		t.Fatal("the near tier does not serve")
	}
	id := testsvc.NewID()
	calls := int64(0)
	for cache.Stats().NearHits < 3 {
		if _, err := wf.Definition(ctx, id); !errors.Is(err, workflows.ErrNotFound) {
			t.Fatalf("Definition = %v, want ErrNotFound", err)
		}
		calls++
		if ctx.Err() != nil {
			t.Fatal("no near hits within the deadline")
		}
	}
	entries := cache.Stats().NearEntries
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	got := flatten(rm)
	var total int64
	for k, v := range got {
		if strings.HasPrefix(k, "ghlcache.cache.requests{workflows,") {
			total += v
		}
	}
	st := cache.Stats()
	if total != calls || got["ghlcache.cache.requests{workflows,near_hit}"] != st.NearHits {
		t.Errorf("%d requests (%d near hits) for %d calls and Stats.NearHits %d", total, got["ghlcache.cache.requests{workflows,near_hit}"], calls, st.NearHits)
	}
	// The gauge is the tier's size at collection: the one definition,
	// unless a flush (a tracking reconnect) came between the reads.
	if g := got["ghlcache.cache.near.entries{}"]; entries == st.NearEntries && g != entries {
		t.Errorf("near entries gauge %d, Stats.NearEntries %d", g, entries)
	}
}
