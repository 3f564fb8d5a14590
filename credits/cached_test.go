package credits_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// instance is one service process: its own pool, Redis client and cache.
type instance struct {
	repo   *credits.Cached
	cache  *cachelayer.Cache
	tracer *testsvc.QueryTracer // counts and holds balance reads
}

// newInstance starts an instance on redisAddr (the shared Redis when empty)
// with the key prefix all instances of a test share. Its sweeper runs every
// 100 ms unless sweep says otherwise.
func newInstance(t *testing.T, prefix, redisAddr string, sweep ...time.Duration) *instance {
	t.Helper()
	interval := 100 * time.Millisecond
	if len(sweep) > 0 {
		interval = sweep[0]
	}
	return newInstanceWith(t, prefix, redisAddr, &credits.CachedConfig{SweepInterval: interval})
}

// newInstanceWith is newInstance with the cached repository's config.
func newInstanceWith(t *testing.T, prefix, redisAddr string, cfg *credits.CachedConfig) *instance {
	t.Helper()
	return newInstanceOn(t, testsvc.DatabaseURL(t), prefix, redisAddr, cfg)
}

// newInstanceOn is newInstanceWith on the database at dbURL (a test's own,
// testsvc.IsolatedDatabaseURL, where other tests' sweepers, woken by their
// writes' notifications, would do its instance's work).
func newInstanceOn(t *testing.T, dbURL, prefix, redisAddr string, cfg *credits.CachedConfig) *instance {
	t.Helper()
	var rdb *redis.Client
	if redisAddr == "" {
		rdb = testsvc.Redis(t)
	} else {
		rdb = redis.NewClient(&redis.Options{
			Addr: redisAddr, ContextTimeoutEnabled: true, MaxRetries: -1,
			DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond,
		})
		t.Cleanup(func() { _ = rdb.Close() })
	}
	return newInstanceClient(t, dbURL, prefix, rdb, cfg)
}

// newInstanceClient is newInstanceOn with the Redis client rdb (one a
// test has added hooks to).
func newInstanceClient(t *testing.T, dbURL, prefix string, rdb *redis.Client, cfg *credits.CachedConfig) *instance {
	t.Helper()
	tracer := &testsvc.QueryTracer{Match: "FROM credit_balances"}
	pool := testsvc.NewPoolOn(t, dbURL, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	// A generous OpTimeout: these tests are about leases and invalidation,
	// and -race on 2 cores can stall a 1000-goroutine burst past 100 ms.
	cache := cachelayer.New(rdb, &cachelayer.Config{Prefix: prefix, OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	repo := credits.NewCached(credits.NewStore(pool), cache, cfg)
	t.Cleanup(func() { _ = repo.Close() })
	return &instance{repo: repo, cache: cache, tracer: tracer}
}

func TestCachedReadThroughAndInvalidate(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newInstance(t, testsvc.Prefix(t), "")
	user := testsvc.NewID()
	_, err := a.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)

	waitOutboxRowsGone(ctx, t, a.cache.FullKey(credits.Key(user, enrichment)))
	first, err := a.repo.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, int64(100), first.Amount)
	loadsBefore := a.tracer.Count()
	for range 10 {
		got, err := a.repo.Balance(ctx, user, enrichment)
		require.NoError(t, err)
		require.Equal(t, first, got, "a hit is DeepEqual to the store's value")
	}
	require.Equal(t, loadsBefore, a.tracer.Count(), "hits do not query Postgres")
	ttl, err := a.cache.TTL(ctx, credits.Key(user, enrichment))
	require.NoError(t, err)
	require.LessOrEqual(t, ttl, 60*time.Second)
	require.Greater(t, ttl, 50*time.Second, "credits are cached 60 s minus at most 10% jitter")

	after, err := a.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 30})
	require.NoError(t, err)
	exists, err := a.cache.Exists(ctx, credits.Key(user, enrichment))
	require.NoError(t, err)
	require.False(t, exists, "the write deleted the key after commit")
	got, err := a.repo.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, after, got)

	st, err := a.repo.OutboxStats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Pending, "the writer removed its outbox row")

	// Rolled-back changes leave the cache alone.
	_, err = a.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1000})
	require.ErrorIs(t, err, credits.ErrInsufficient)
	exists, err = a.cache.Exists(ctx, credits.Key(user, enrichment))
	require.NoError(t, err)
	require.True(t, exists, "a failed deduct does not invalidate")
}

// TestCachedStaleSetRace: a reader loads the old balance, a writer commits a
// deduct and invalidates before the reader fills; the old balance must never
// reach Redis, and the reader answers with the new one.
func TestCachedStaleSetRace(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	reader, writer := newInstance(t, prefix, ""), newInstance(t, prefix, "")
	user := testsvc.NewID()
	_, err := writer.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)

	held, release := reader.tracer.HoldNext()
	defer release()
	type result struct {
		b   credits.Balance
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := reader.repo.Balance(ctx, user, enrichment)
		done <- result{b, err}
	}()
	select {
	case <-held: // the reader has read 100 from Postgres and holds a lease
	case <-ctx.Done():
		t.Fatal("reader never queried Postgres")
	}
	newer, err := writer.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 40})
	require.NoError(t, err)
	require.Equal(t, int64(60), newer.Amount)
	release()

	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("reader did not finish")
	}
	require.NoError(t, r.err)
	require.Equal(t, newer, r.b, "the reader's rejected fill reloaded the new balance")
	require.Equal(t, int64(1), reader.cache.Stats().StaleFillsRejected)

	var cached credits.Balance
	found, err := reader.cache.Get(ctx, credits.Key(user, enrichment), &cached)
	require.NoError(t, err)
	if found {
		require.Equal(t, newer, cached, "Redis never holds the old balance")
	}
	fresh := newInstance(t, prefix, "")
	got, err := fresh.repo.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, newer, got)
}

// TestCachedReadYourWritesAcrossInstances: a read on B that begins after a
// deduct on A returned sees the deduct, 200 times in a row.
func TestCachedReadYourWritesAcrossInstances(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	a, b := newInstance(t, prefix, ""), newInstance(t, prefix, "")
	user := testsvc.NewID()
	_, err := a.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 10_000})
	require.NoError(t, err)
	for i := range 200 {
		_, err := b.repo.Balance(ctx, user, enrichment) // warm B's view
		require.NoError(t, err)
		want, err := a.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 3})
		require.NoError(t, err)
		got, err := b.repo.Balance(ctx, user, enrichment)
		require.NoError(t, err)
		require.Equal(t, want, got, "round %d", i)
	}
	require.Equal(t, int64(10_000-600), mustBalance(ctx, t, b.repo, user).Amount)
}

func mustBalance(ctx context.Context, t *testing.T, r credits.Repo, user int64) credits.Balance {
	t.Helper()
	b, err := r.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	return b
}

// TestCachedStampede: 1000 concurrent reads of a cold balance cause one
// Postgres query in one instance, and one across four instances.
func TestCachedStampede(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for _, n := range []int{1, 4} {
		prefix := testsvc.Prefix(t)
		insts := make([]*instance, n)
		for i := range insts {
			insts[i] = newInstance(t, prefix, "")
		}
		user := testsvc.NewID()
		_, err := credits.NewStore(testsvc.Pool(t)).Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 5})
		require.NoError(t, err)
		// A plain Store's change is invalidated too (the triggers' row):
		// let that delete land before the reads, not during them.
		waitOutboxRowsGone(ctx, t, insts[0].cache.FullKey(credits.Key(user, enrichment)))

		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 1000 {
			inst := insts[g%n]
			wg.Go(func() {
				<-start
				b, err := inst.repo.Balance(ctx, user, enrichment)
				if err != nil || b.Amount != 5 {
					t.Errorf("read: %v %v", b, err)
				}
			})
		}
		close(start)
		wg.Wait()
		var queries int64
		for _, inst := range insts {
			queries += inst.tracer.Count()
		}
		require.Equal(t, int64(1), queries, "%d instance(s): balance queries for 1000 cold reads", n)
		t.Logf("stampede: 1000 reads over %d instance(s) → %d balance query", n, queries)
	}
}

// TestCachedLostInvalidation: the writer cannot reach Redis when it deducts;
// the change still commits, the key waits in the outbox, the writer reads its
// own write from Postgres, and after the writer is gone another instance's
// sweeper invalidates the key within 3 s. Not parallel: every instance
// sweeps the whole outbox, so another test's sweeper would repair it early.
func TestCachedLostInvalidation(t *testing.T) {
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	proxy := testsvc.StartProxy(t, redisAddr(t))
	reader := newInstance(t, prefix, "", time.Hour) // does not sweep during the test
	writer := newInstance(t, prefix, proxy.Addr)
	user := testsvc.NewID()
	_, err := reader.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)
	// First the add's row is marked done (batched).
	waitOutboxRowsGone(ctx, t, prefix+credits.Key(user, enrichment))
	old := mustBalance(ctx, t, reader.repo, user) // cached in Redis now
	require.Equal(t, int64(100), old.Amount)

	proxy.Block()
	want, err := writer.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 25})
	require.NoError(t, err, "a write succeeds whether or not Redis is reachable")
	require.Equal(t, int64(75), want.Amount)
	var waiting int
	require.NoError(t, testsvc.Pool(t).QueryRow(ctx,
		`SELECT count(*) FROM cache_outbox WHERE cache_key = $1 AND done_at IS NULL`, prefix+credits.Key(user, enrichment)).Scan(&waiting))
	require.Equal(t, 1, waiting, "the outbox holds the key")
	require.Equal(t, want, mustBalance(ctx, t, writer.repo, user), "the writer reads its own write")
	require.Equal(t, old, mustBalance(ctx, t, reader.repo, user), "the reader still sees its cached value (until the sweep)")
	require.NoError(t, writer.repo.Close())

	began := time.Now()
	newInstance(t, prefix, "") // its sweeper runs every 100 ms
	deadline := time.Now().Add(3 * time.Second)
	for {
		if got := mustBalance(ctx, t, reader.repo, user); got == want {
			break
		}
		require.True(t, time.Now().Before(deadline), "stale balance outlived the sweep by 3 s")
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	t.Logf("lost invalidation repaired %v after a new instance started", time.Since(began).Round(time.Millisecond))
	require.Eventually(t, func() bool {
		var n int
		_ = testsvc.Pool(t).QueryRow(ctx, `SELECT count(*) FROM cache_outbox WHERE cache_key = $1 AND done_at IS NULL`,
			prefix+credits.Key(user, enrichment)).Scan(&n)
		return n == 0
	}, 3*time.Second, 20*time.Millisecond, "the outbox row is removed")
}

// waitOutboxRowsGone waits until no waiting outbox row names fullKey: then no
// sweeper (of any test: every instance sweeps the whole domain) can delete
// the key again, which would make a read load once more.
func waitOutboxRowsGone(ctx context.Context, t *testing.T, fullKey string) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		err := testsvc.Pool(t).QueryRow(ctx, `SELECT count(*) FROM cache_outbox WHERE cache_key = $1 AND done_at IS NULL`, fullKey).Scan(&n)
		return err == nil && n == 0
	}, 10*time.Second, 10*time.Millisecond, "outbox rows of %s removed", fullKey)
}

func redisAddr(t *testing.T) string {
	t.Helper()
	opts, err := redis.ParseURL(testsvc.RedisURL(t))
	require.NoError(t, err)
	return opts.Addr
}

func TestCachedBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newInstance(t, testsvc.Prefix(t), "")
	_, err := a.repo.Balance(ctx, 0, enrichment)
	require.ErrorIs(t, err, credits.ErrInvalid)
	_, err = a.repo.Add(ctx, credits.Change{UserID: 1, Type: "Bad Type", Amount: 1})
	require.ErrorIs(t, err, credits.ErrInvalid)
	_, err = a.repo.Deduct(ctx, credits.Change{UserID: 1, Type: enrichment, Amount: 0})
	require.ErrorIs(t, err, credits.ErrInvalid)
	require.Zero(t, a.cache.Stats().Invalidations)
}

// TestCachedPendingReadsShareOneLoad: while the writer's invalidation is
// pending (its Redis unreachable), concurrent reads of the key in the
// writer's process share loads like every other read — a few balance
// queries for 200 reads, not 200 — and each returns the write. (On a
// database of its own: another test's sweeper, sharing its Redis, would
// deliver the invalidation.)
func TestCachedPendingReadsShareOneLoad(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	proxy := testsvc.StartProxy(t, redisAddr(t))
	writer := newInstanceOn(t, testsvc.IsolatedDatabaseURL(t), prefix, proxy.Addr, &credits.CachedConfig{SweepInterval: time.Hour})
	user := testsvc.NewID()
	_, err := writer.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)
	proxy.Block()
	want, err := writer.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 25})
	require.NoError(t, err)
	st, err := writer.repo.OutboxStats(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, st.Pending, "the invalidation is pending")

	const n = 200
	held, release := writer.tracer.HoldNext()
	defer release()
	before := writer.tracer.Count()
	var started, wg sync.WaitGroup
	started.Add(n)
	for range n {
		wg.Go(func() {
			started.Done()
			got, err := writer.repo.Balance(ctx, user, enrichment)
			if err != nil || got != want {
				t.Errorf("pending read: %+v %v, want %+v", got, err, want)
			}
		})
	}
	select {
	case <-held: // the first read's query is held
	case <-ctx.Done():
		t.Fatal("no read reached Postgres")
	}
	started.Wait()
	release()
	wg.Wait()
	queries := writer.tracer.Count() - before
	t.Logf("%d reads of a pending key: %d balance queries", n, queries)
	require.LessOrEqual(t, queries, int64(10), "reads of a pending key share loads")
}
