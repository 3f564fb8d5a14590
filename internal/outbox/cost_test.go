package outbox_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// tracedPool is a pool of its own whose every statement the tracer counts:
// the outbox's own statements, when the writes go through another pool.
func tracedPool(t *testing.T) (*pgxpool.Pool, *testsvc.QueryTracer) {
	t.Helper()
	tracer := &testsvc.QueryTracer{} // an empty Match counts every statement
	return testsvc.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer }), tracer
}

// TestStatementsPerWrite: 1000 writes at a simulated 500 writes/s against
// real Postgres and Redis. The writes' own statements (BEGIN, the INSERT,
// COMMIT) go through another pool; the outbox's pool counts its own: one
// UPDATE per flush (the marker's timer, 100 ms = 50 writes here, driven by
// the test) and one statement for the sweep that follows New; the sweeper
// then knows of no work and waits its idle interval. 21 statements for
// 1000 writes: 0.021 per write, against a budget of 0.1 (and 1 DELETE per
// write, or more, before the marking was batched by time).
func TestStatementsPerWrite(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	pool, tracer := tracedPool(t)
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(pool, cache, outbox.Config{
		Domain: domain, Interval: time.Second, IdleInterval: 10 * time.Second,
		FlushInterval: time.Hour, EpochPoll: time.Hour, Now: clk.Now, // the test drives both
		NoListen: true,
	})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	atNew := tracer.Count() // the namespace's registration (namespace_test.go counts it)

	const writes, perSecond, flushEvery = 1000, 500, 50 // 50 writes = 100 ms
	for i := 1; i <= writes; i++ {
		o.Invalidate(ctx, write(ctx, t, testsvc.Pool(t), o, fmt.Sprintf("balance:%d", i)))
		if i%flushEvery == 0 {
			require.NoError(t, o.FlushDone(ctx))
		}
		if i%perSecond == 0 {
			clk.Advance(time.Second)
			o.Step(ctx)
		}
	}
	got := tracer.Count() - atNew
	require.Equal(t, int64(writes/flushEvery+1), got, "20 flushes and one sweep")
	require.LessOrEqual(t, float64(got)/writes, 0.1)
	t.Logf("outbox statements per write at %d writes/s: %d/%d = %.3f", perSecond, got, writes, float64(got)/writes)
	st := mustStats(ctx, t, o)
	require.Zero(t, st.Depth, "every row marked done")
	require.Zero(t, st.Pending)
}

// TestStatementsPerWriteRealTimer: the same with the marker's own timer
// (FlushInterval 100 ms) and 8 concurrent writers: at most one flush per
// FlushInterval after its first queued row, so the outbox's statements are
// bounded by the elapsed time, whatever the write rate.
func TestStatementsPerWriteRealTimer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	pool, tracer := tracedPool(t)
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	const flushInterval = 100 * time.Millisecond
	o := outbox.New(pool, cache, outbox.Config{Domain: domain, FlushInterval: flushInterval, EpochPoll: time.Hour, NoListen: true})
	atNew := tracer.Count()

	const writers, each = 8, 150
	began := time.Now()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				o.Invalidate(ctx, write(ctx, t, testsvc.Pool(t), o, fmt.Sprintf("balance:%d:%d", w, i)))
			}
		})
	}
	wg.Wait()
	require.NoError(t, o.Close()) // the last flush
	elapsed := time.Since(began)
	got := tracer.Count() - atNew - 1 // the namespace's release at Close
	require.LessOrEqual(t, got, int64(elapsed/flushInterval)+1)
	require.Zero(t, waitingRows(ctx, t, domain))
	rate := float64(writers*each) / elapsed.Seconds()
	t.Logf("%d writes in %v (%.0f/s): %d outbox statements, %.3f per write", writers*each, elapsed.Round(time.Millisecond), rate, got, float64(got)/(writers*each))
}

// TestIdleStatementsPerSecond: a quiet instance (nothing written, nothing
// waiting) costs Postgres one statement per IdleInterval: the sweep after
// New, then one every 10 s (not 3 every second, as a sweep per Interval
// cost before). A row another instance leaves is found at the next idle
// sweep; having found it, the sweeper looks again after Interval, then
// goes back to idling.
func TestIdleStatementsPerSecond(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, tracer := tracedPool(t)
	inv := &invalidator{}
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(pool, inv, outbox.Config{
		Domain: domain, Interval: time.Second, IdleInterval: 10 * time.Second, EpochPoll: time.Hour, Now: clk.Now,
		NoListen: true,
	})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	atNew := tracer.Count()

	const seconds = 300
	for range seconds { // one step per simulated second (the real sweeper steps every 250 ms: no I/O unless due)
		clk.Advance(time.Second)
		o.Step(ctx)
	}
	got := tracer.Count() - atNew
	require.Equal(t, int64(1+(seconds-1)/10), got, "the first sweep, then one per 10 s (each refreshes the namespace when due)")
	t.Logf("idle: %d statements in %d s = %.2f per second per domain", got, seconds, float64(got)/seconds)

	insert(ctx, t, domain, "left-by-another-instance", time.Second) // older than the grace left to its writer
	var sweptAfter int
	for s := 1; s <= 10 && len(inv.keys()) == 0; s++ {
		clk.Advance(time.Second)
		o.Step(ctx)
		sweptAfter = s
	}
	require.Equal(t, []string{"left-by-another-instance"}, inv.keys())
	require.Equal(t, 1, sweptAfter, "the last idle sweep was at 291 s: the next is at 301 s")
	before := tracer.Count()
	clk.Advance(time.Second)
	o.Step(ctx) // busy: it found a row last time
	require.Equal(t, int64(1), tracer.Count()-before, "one look after Interval, nothing waits")
	for range 9 {
		clk.Advance(time.Second)
		o.Step(ctx)
	}
	require.Equal(t, int64(1), tracer.Count()-before, "idle again")
}

// TestIdleCostWithListen: the idle cost with the LISTEN connection up, at
// the defaults (IdleInterval 2 s, a namespace refresh every 30 s, a ping
// of the LISTEN connection every 30 s) over a simulated 10 minutes: the
// namespace's registration at New, one LISTEN, one sweep per IdleInterval
// (refreshes ride on them: no statement of their own). The pings (one per
// ListenKeepalive of real time, not a statement the tracer sees) add 2
// per minute: 32 round trips per minute and domain.
func TestIdleCostWithListen(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tracer := &exceptStats{}
	pool := testsvc.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	inv := &invalidator{}
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(pool, inv, outbox.Config{Domain: domain, EpochPoll: time.Hour, Now: clk.Now})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	atNew := tracer.n.Load()
	require.Eventually(t, func() bool { return mustStats(ctx, t, o).Listening }, 10*time.Second, time.Millisecond)
	require.Equal(t, int64(1), tracer.n.Load()-atNew, "one LISTEN")

	const seconds = 600
	for range seconds {
		clk.Advance(time.Second)
		o.Step(ctx)
	}
	got := tracer.n.Load() - atNew - 1 // LISTEN
	require.Equal(t, int64(seconds/2), got, "one sweep per IdleInterval, refreshes included")
	var live time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT live_until FROM cache_namespaces WHERE domain = $1`, domain).Scan(&live))
	require.WithinDuration(t, time.Now().Add(6*time.Minute+5*time.Minute), live, 30*time.Second, "refreshed: MaxAge (6 min) + 5 min from now (real time)")
	t.Logf("idle, LISTENing: %d statements in %d simulated s = %.0f per minute per domain (+2 pings per minute)", got, seconds, float64(got)*60/seconds)
}

// exceptStats counts every statement but the test's own Stats calls.
type exceptStats struct{ n atomic.Int64 }

func (e *exceptStats) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if !strings.Contains(d.SQL, "-- name: CacheOutboxStats") {
		e.n.Add(1)
	}
	return ctx
}

func (e *exceptStats) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
