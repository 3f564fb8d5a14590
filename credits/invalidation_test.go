package credits_test

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
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// TestCachedCommitReplyLost: a deduct's statement (in autocommit, its own
// COMMIT) reaches Postgres and commits, but its reply is lost. The deduct
// returns ErrCommitUnknown, the writer invalidated the key anyway (its next
// read is the committed balance, not its cached one), and a retry with the
// same idempotency key returns the first result without applying it again.
// The outbox row, whose id the writer never learnt, goes at a sweep.
func TestCachedCommitReplyLost(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lose := &testsvc.LostExecReplyTracer{Match: "credit_apply"}
	pool, proxy := testsvc.NewPoolThrough(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = lose })
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	writer := credits.NewCached(credits.NewStore(pool), cache, &credits.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = writer.Close() })

	user := testsvc.NewID()
	_, err := writer.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)
	old := mustBalance(ctx, t, writer, user)
	require.Equal(t, int64(100), old.Amount)
	exists, err := cache.Exists(ctx, credits.Key(user, enrichment))
	require.NoError(t, err)
	require.True(t, exists, "the old balance is cached")

	change := credits.Change{UserID: user, Type: enrichment, Amount: 25, IdempotencyKey: "lost-reply"}
	lose.Arm(proxy)
	_, err = writer.Deduct(ctx, change)
	require.ErrorIs(t, err, credits.ErrCommitUnknown)
	require.ErrorContains(t, err, "commit outcome unknown")
	require.Equal(t, int64(1), lose.Fired(), "the statement's reply was the one lost")

	committed, err := credits.NewStore(testsvc.Pool(t)).Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, int64(75), committed.Amount, "Postgres did commit")
	exists, err = cache.Exists(ctx, credits.Key(user, enrichment))
	require.NoError(t, err)
	require.False(t, exists, "the ambiguous commit was invalidated as if it committed")
	require.Equal(t, committed, mustBalance(ctx, t, writer, user), "the writer reads the committed balance, not its cached one")

	retried, err := writer.Deduct(ctx, change)
	require.NoError(t, err, "a retry with the same idempotency key replays")
	require.Equal(t, committed, retried, "the first result, applied once")
	require.Equal(t, committed, mustBalance(ctx, t, writer, user))
	st, err := writer.OutboxStats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Pending)
	// The lost statement's row (its id never arrived) is a sweeper's: this
	// writer's, or any other test's (they sweep every credits row).
	require.NoError(t, writer.Sweep(ctx))
	require.Eventually(t, func() bool { return outboxRows(ctx, t, cache.FullKey(credits.Key(user, enrichment))) == 0 },
		10*time.Second, 10*time.Millisecond, "the outbox rows are removed")
}

// TestCachedNoCacheWriterLeavesRowForCachedInstances: an instance in
// no-cache mode shares the database (and so the outbox) with a cached
// instance. Its deduct cannot reach Redis, so it must not count the
// invalidation as delivered: the row stays (through its own sweep and
// Close) until the cached instance's sweep deletes the key, and then the
// cached instance reads the new balance. Nothing is left pending in the
// no-cache instance, whose reads go to Postgres anyway. Not parallel: any
// other test's sweeper would remove the row.
func TestCachedNoCacheWriterLeavesRowForCachedInstances(t *testing.T) {
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	cached := newInstance(t, prefix, "", time.Hour) // sweeps only when told
	noCache := cachelayer.New(nil, &cachelayer.Config{Prefix: prefix})
	writer := credits.NewCached(credits.NewStore(testsvc.NewPool(t, nil)), noCache, &credits.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = writer.Close() })

	user := testsvc.NewID()
	fullKey := cached.cache.FullKey(credits.Key(user, enrichment))
	_, err := cached.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)
	// First the add's row is marked done (batched, within ~100 ms).
	waitOutboxRowsGone(ctx, t, fullKey)
	old := mustBalance(ctx, t, cached.repo, user) // cached in Redis now

	want, err := writer.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 25})
	require.NoError(t, err, "writes succeed in no-cache mode")
	require.Equal(t, want, mustBalance(ctx, t, writer, user), "no-cache reads go to Postgres")
	st, err := writer.OutboxStats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Pending, "nothing pending in no-cache mode")
	require.NoError(t, writer.Sweep(ctx), "a no-cache sweep has nothing to do")
	require.NoError(t, writer.Close()) // flushes its queue of rows to remove, if it had one
	require.Equal(t, 1, outboxRows(ctx, t, fullKey), "the row waits for an instance that can delete the key")
	require.Equal(t, old, mustBalance(ctx, t, cached.repo, user), "the cached instance still has the old entry")

	require.NoError(t, cached.repo.Sweep(ctx))
	require.Zero(t, outboxRows(ctx, t, fullKey))
	require.Equal(t, want, mustBalance(ctx, t, cached.repo, user), "after its sweep the cached instance reads the new balance")
}

// TestCachedClosedCacheTakesNoRows: an instance whose Cache was closed
// while its Cached still runs must neither remove another instance's
// leftover row nor hold it (a claim's row lock would make healthy sweepers
// skip it): a healthy instance sweeps the row while the closed instance's
// sweep is held mid-query. Not parallel, for the same reason.
func TestCachedClosedCacheTakesNoRows(t *testing.T) {
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	healthy := newInstance(t, prefix, "", time.Hour)
	proxy := testsvc.StartProxy(t, redisAddr(t))
	cutOff := newInstance(t, prefix, proxy.Addr, time.Hour) // leaves a row behind

	tracer := &testsvc.QueryTracer{Match: "cache_outbox"}
	closedCache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: prefix})
	require.NoError(t, closedCache.Close())
	closed := credits.NewCached(credits.NewStore(testsvc.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })),
		closedCache, &credits.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = closed.Close() })

	user := testsvc.NewID()
	fullKey := healthy.cache.FullKey(credits.Key(user, enrichment))
	_, err := healthy.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)
	// First the add's row is marked done (batched, within ~100 ms).
	waitOutboxRowsGone(ctx, t, fullKey)
	old := mustBalance(ctx, t, healthy.repo, user) // cached
	proxy.Block()
	want, err := cutOff.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 25})
	require.NoError(t, err)
	require.NoError(t, cutOff.repo.Close())
	require.Equal(t, 1, outboxRows(ctx, t, fullKey), "the cut-off writer left its row")

	require.NoError(t, closed.Sweep(ctx))
	require.Equal(t, 1, outboxRows(ctx, t, fullKey), "a closed cache's sweep removes nothing")
	require.Equal(t, old, mustBalance(ctx, t, healthy.repo, user))

	// Hold the closed instance's next sweep after its first outbox query
	// (if it runs one), and sweep the healthy instance meanwhile.
	held, release := tracer.HoldNext()
	defer release()
	swept := make(chan error, 1)
	go func() { swept <- closed.Sweep(ctx) }()
	select {
	case <-held:
	case err := <-swept: // it queried nothing, so it holds nothing
		require.NoError(t, err)
		swept <- nil
	case <-ctx.Done():
		t.Fatal("the closed instance's sweep neither queried nor finished")
	}
	require.NoError(t, healthy.repo.Sweep(ctx))
	require.Zero(t, outboxRows(ctx, t, fullKey), "the healthy sweep got the row: the closed one holds no lock")
	require.Equal(t, want, mustBalance(ctx, t, healthy.repo, user))
	release()
	select {
	case err := <-swept:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the closed instance's sweep did not finish")
	}
}

// outboxRows counts the outbox rows naming fullKey that wait for their
// key's delete (done rows, kept for re-deletes, do not count).
func outboxRows(ctx context.Context, t *testing.T, fullKey string) int {
	t.Helper()
	var n int
	require.NoError(t, testsvc.Pool(t).QueryRow(ctx, `SELECT count(*) FROM cache_outbox WHERE cache_key = $1 AND done_at IS NULL`, fullKey).Scan(&n))
	return n
}

// outboxTracer counts the outbox's own statements on a pool (its sqlc
// queries but the write's INSERT; the write's statements go uncounted).
type outboxTracer struct{ n atomic.Int64 }

func (o *outboxTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.Contains(data.SQL, "-- name: CacheOutbox") && !strings.Contains(data.SQL, "CacheOutboxInsert") {
		o.n.Add(1)
	}
	return ctx
}

func (o *outboxTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestCachedOutboxStatementsPerWrite: sequential deducts through Cached
// with its real marker and sweeper. Marking done is batched by time (one
// UPDATE per 100 ms), so the outbox's own statements are bounded by the
// elapsed time, not by the number of writes (before: one DELETE per write,
// or nearly). The exact count at a simulated 500 writes/s is
// internal/outbox's TestStatementsPerWrite. On a database of its own:
// other tests' rows and notifications would be this instance's work too.
func TestCachedOutboxStatementsPerWrite(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	tracer := &outboxTracer{}
	pool := testsvc.NewPoolOn(t, testsvc.IsolatedDatabaseURL(t), func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	repo := credits.NewCached(credits.NewStore(pool), cache, nil)
	t.Cleanup(func() { _ = repo.Close() })

	user := testsvc.NewID()
	_, err := repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1_000_000})
	require.NoError(t, err)
	const writes = 300
	began := time.Now()
	for i := range writes {
		_, err := repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1, IdempotencyKey: fmt.Sprintf("w%d", i)})
		require.NoError(t, err)
	}
	require.NoError(t, repo.Close()) // the last flush
	elapsed := time.Since(began)
	got := tracer.n.Load()
	// At most one flush per 100 ms (plus Close's), and a sweep (at most
	// six statements) per second.
	bound := int64(elapsed/(100*time.Millisecond)) + 2 + 6*(int64(elapsed/time.Second)+1)
	require.LessOrEqual(t, got, bound)
	require.Less(t, got, int64(writes), "far from one per write")
	t.Logf("%d deducts in %v (%.0f/s): %d outbox statements, %.3f per write",
		writes, elapsed.Round(time.Millisecond), writes/elapsed.Seconds(), got, float64(got)/writes)
}

// TestCachedReadDuringInvalidationIsAHit: a read of a key in the writer's
// own process while the write's delete is on its way to Redis overlaps the
// write (which has not returned), so it is served as any process's read
// is: here a hit, with no Postgres query and no bypass. The key is marked
// pending only when the delete fails (TestCachedPendingReadsShareOneLoad);
// once the write returned, its process reads the new balance.
func TestCachedReadDuringInvalidationIsAHit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	hook := &holdUnlinkHook{held: make(chan struct{}), release: make(chan struct{})}
	var releaseOnce sync.Once
	releaseUnlink := func() { releaseOnce.Do(func() { close(hook.release) }) }
	rdb := testsvc.Redis(t)
	rdb.AddHook(hook)
	a := newInstanceClient(t, testsvc.DatabaseURL(t), testsvc.Prefix(t), rdb, &credits.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(releaseUnlink) // runs first (cleanups run last in, first out): a failed test never closes the instance on a held UNLINK
	user := testsvc.NewID()
	full := a.cache.FullKey(credits.Key(user, enrichment))
	_, err := a.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)
	cached, err := a.repo.Balance(ctx, user, enrichment) // a miss: loads and fills
	require.NoError(t, err)
	require.Equal(t, int64(100), cached.Amount)

	hook.key.Store(&full)
	type result struct {
		b   credits.Balance
		err error
	}
	deducted := make(chan result, 1)
	go func() {
		b, err := a.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 25})
		deducted <- result{b, err}
	}()
	select {
	case <-hook.held: // committed; its UNLINK is held
	case <-ctx.Done():
		t.Fatal("the deduct's delete never reached Redis")
	}
	queries, bypasses := a.tracer.Count(), a.cache.Stats().Bypasses
	got, err := a.repo.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, cached, got, "a read overlapping the write is a hit of the cached balance")
	require.Equal(t, queries, a.tracer.Count(), "no Postgres query while the delete is on its way")
	require.Equal(t, bypasses, a.cache.Stats().Bypasses, "no bypass while the delete is on its way")

	releaseUnlink()
	var r result
	select {
	case r = <-deducted:
	case <-ctx.Done():
		t.Fatal("the deduct did not return after its delete was released")
	}
	require.NoError(t, r.err)
	require.Equal(t, int64(75), r.b.Amount)
	got, err = a.repo.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, r.b, got, "after the write returned, its process reads it")
	st, err := a.repo.OutboxStats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Pending, "a delivered invalidation leaves nothing pending")
}

// holdUnlinkHook holds the first UNLINK (alone or in a pipeline) of the
// key it is armed with until release is closed, closing held when it does.
type holdUnlinkHook struct {
	key     atomic.Pointer[string]
	once    sync.Once
	held    chan struct{}
	release chan struct{}
}

func (h *holdUnlinkHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *holdUnlinkHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.maybeHold(cmd)
		return next(ctx, cmd)
	}
}

func (h *holdUnlinkHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			h.maybeHold(cmd)
		}
		return next(ctx, cmds)
	}
}

func (h *holdUnlinkHook) maybeHold(cmd redis.Cmder) {
	key := h.key.Load()
	if key == nil || cmd.Name() != "unlink" {
		return
	}
	for _, arg := range cmd.Args()[1:] {
		if s, ok := arg.(string); ok && s == *key {
			h.once.Do(func() {
				close(h.held)
				<-h.release
			})
			return
		}
	}
}
