package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// insertDone inserts a done row whose delete succeeded age ago.
func insertDone(ctx context.Context, t *testing.T, domain, key string, age time.Duration) {
	t.Helper()
	_, err := testsvc.Pool(t).Exec(ctx,
		`INSERT INTO cache_outbox (domain, cache_key, created_at, done_at)
		 VALUES ($1, $2, now() - make_interval(secs => $3), now() - make_interval(secs => $3))`, domain, key, age.Seconds())
	require.NoError(t, err)
}

// TestEpochChangeRedeletesRecentDoneRows: after the Invalidator's
// TopologyEpoch changes, one step deletes again the keys of the done rows
// younger than MaxAge — this process's and another instance's, each key
// once — and not those of older rows, which the next sweep removes.
// Nothing happens while the epoch stays.
func TestEpochChangeRedeletesRecentDoneRows(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, _ := setupWith(t, 2) // pages of 2 rows
	mine := insert(ctx, t, domain, "mine", 0)
	o.Invalidate(ctx, outbox.Invalidation{ID: mine, Key: "mine"}) // queued to be marked done, not yet marked
	insertDone(ctx, t, domain, "other", time.Second)
	insertDone(ctx, t, domain, "other", 2*time.Second) // the same key twice
	insertDone(ctx, t, domain, "third", 3*time.Second)
	insertDone(ctx, t, domain, "expired", maxAge+time.Minute)
	inv.reset()

	o.Step(ctx)
	require.Zero(t, inv.calls, "the epoch did not change, and no sweep is due")

	inv.epoch.Add(1)
	o.Step(ctx)
	require.ElementsMatch(t, []string{"mine", "other", "third"}, inv.keys(),
		"recent done rows' keys deleted again, this process's queued one included, each once")
	require.Equal(t, int64(3), mustStats(ctx, t, o).Redeleted)

	inv.reset()
	o.Step(ctx)
	require.Zero(t, inv.calls, "one pass per change")

	require.NoError(t, o.Sweep(ctx))
	st := mustStats(ctx, t, o)
	require.Equal(t, int64(1), st.Cleaned, "the done row older than MaxAge is removed")
	var keys []string
	rows, err := testsvc.Pool(t).Query(ctx, `SELECT cache_key FROM cache_outbox WHERE domain = $1 ORDER BY id`, domain)
	require.NoError(t, err)
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		keys = append(keys, k)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"mine", "other", "other", "third"}, keys, "younger done rows are kept")
}

// TestEpochChangeRetriesFailedRedeletes: a re-delete that fails (the key's
// shard is still down) is retried at each sweep until it succeeds.
func TestEpochChangeRetriesFailedRedeletes(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, clk := setupWith(t, 500)
	insertDone(ctx, t, domain, "up", time.Second)
	insertDone(ctx, t, domain, "down", time.Second)
	inv.setFail("down")
	inv.epoch.Add(1)
	o.Step(ctx)
	require.Equal(t, []string{"up"}, inv.keys())

	inv.reset()
	require.ErrorIs(t, o.Sweep(ctx), cachelayer.ErrUnavailable)
	require.Equal(t, 1, inv.calls, "retried at the sweep")
	inv.setFail()
	require.NoError(t, o.Sweep(ctx))
	require.Equal(t, []string{"down"}, inv.keys(), "retried, not the whole pass again")
	require.Equal(t, int64(2), mustStats(ctx, t, o).Redeleted)

	// A re-delete that keeps failing is given up MaxAge after its first
	// failure: the entry has expired by then.
	inv.setFail("down")
	inv.epoch.Add(1)
	o.Step(ctx)
	clk.Advance(maxAge)
	inv.reset()
	require.NoError(t, o.Sweep(ctx))
	require.Zero(t, inv.calls)
}

// TestInvalidateOverlappingEpochChangeWaits: when the TopologyEpoch changes
// while an invalidation's delete is under way, the delete may have reached
// a master that lost it: the row is not marked done but keeps waiting
// (and the key pending), so the sweep deletes it on the new topology.
func TestInvalidateOverlappingEpochChangeWaits(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, _ := setupWith(t, 500)
	inv.onDelete = func([]string) { inv.epoch.Add(1) } // a failover during the delete
	id := insert(ctx, t, domain, "k", 0)
	o.Invalidate(ctx, outbox.Invalidation{ID: id, Key: "k"})
	inv.onDelete = nil
	require.True(t, o.Pending("k"))
	require.NoError(t, o.FlushDone(ctx))
	require.Equal(t, int64(1), depth(ctx, t, o), "not counted done")

	inv.reset()
	require.NoError(t, o.Sweep(ctx))
	require.Equal(t, []string{"k"}, inv.keys())
	require.False(t, o.Pending("k"))
	require.Zero(t, depth(ctx, t, o))
}

// TestEpochChangeRedeletesWithRedis: an invalidation reached Redis; then a
// failover promotes a replica that still holds the old entry (set back by
// hand). When the cache's epoch changes, the sweeper deletes it again.
func TestEpochChangeRedeletesWithRedis(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	inv := &realInvalidator{Cache: cache}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(testsvc.Pool(t), inv, outbox.Config{Domain: domain, Interval: time.Hour, EpochPoll: time.Hour})
	t.Cleanup(func() { require.NoError(t, o.Close()) })

	require.NoError(t, cache.Set(ctx, "entry", "old", time.Minute))
	o.Invalidate(ctx, write(ctx, t, testsvc.Pool(t), o, "entry"))
	require.False(t, exists(ctx, t, cache, "entry"))
	require.NoError(t, o.FlushDone(ctx))
	require.Zero(t, depth(ctx, t, o))

	require.NoError(t, cache.Set(ctx, "entry", "old", time.Minute)) // the promoted replica's copy
	o.Step(ctx)
	require.True(t, exists(ctx, t, cache, "entry"), "no topology change seen: nothing to do")
	inv.bump.Add(1)
	o.Step(ctx)
	require.False(t, exists(ctx, t, cache, "entry"), "deleted again after the topology change")
}

// TestBreakerRecoveryRedeletes: a real breaker recovery moves the cache's
// TopologyEpoch, and the running sweeper deletes the keys of recent
// invalidations again (here: one set back in Redis while this process
// could not reach it, as a promoted replica would hold it).
func TestBreakerRecoveryRedeletes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cache, direct, proxy := cutOffCache(t, cachelayer.Config{BreakerFailures: 1, BreakerCooldown: 50 * time.Millisecond})
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(testsvc.Pool(t), cache, outbox.Config{Domain: domain, Interval: 50 * time.Millisecond, IdleInterval: time.Hour})
	t.Cleanup(func() { require.NoError(t, o.Close()) })

	require.NoError(t, direct.Set(ctx, "entry", "old", time.Minute))
	o.Invalidate(ctx, write(ctx, t, testsvc.Pool(t), o, "entry"))
	require.False(t, exists(ctx, t, direct, "entry"))
	require.Eventually(t, func() bool { return depth(ctx, t, o) == 0 }, 10*time.Second, 5*time.Millisecond, "marked done")

	proxy.Block()
	_, err := cache.Exists(ctx, "x")
	require.ErrorIs(t, err, cachelayer.ErrUnavailable)
	require.True(t, cache.Stats().BreakerOpen)
	require.NoError(t, direct.Set(ctx, "entry", "old", time.Minute)) // what the new master still holds
	proxy.Open()
	require.Eventually(t, func() bool {
		_, _ = cache.Exists(ctx, "x") // a read probes the breaker
		return cache.Stats().Recoveries == 1
	}, 10*time.Second, 5*time.Millisecond, "the breaker closes")
	recovered := time.Now()
	require.Eventually(t, func() bool { return !exists(ctx, t, direct, "entry") }, 10*time.Second, 5*time.Millisecond,
		"the sweeper deletes the key again")
	t.Logf("re-deleted %v after the breaker closed", time.Since(recovered).Round(time.Millisecond))
	require.Equal(t, int64(1), mustStats(ctx, t, o).Redeleted)
}

// TestEpochChangeSweepsAtOnce: an idle sweeper whose cache sees Redis come
// back (the epoch moves) sweeps in the same step, not at its idle
// interval: rows a dead writer left during the outage are deleted within
// EpochPoll of Redis's return.
func TestEpochChangeSweepsAtOnce(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inv := &invalidator{}
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(testsvc.Pool(t), inv, outbox.Config{
		Domain: domain, Interval: time.Second, IdleInterval: time.Hour, EpochPoll: time.Hour, Now: clk.Now,
	})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	clk.Advance(time.Second)
	o.Step(ctx) // the first sweep; idle from now on

	// A writer that died during an outage left a row.
	insert(ctx, t, domain, "left-by-a-dead-writer", time.Second)
	clk.Advance(time.Second)
	o.Step(ctx)
	require.Empty(t, inv.keys(), "idle: no sweep due for an hour")

	inv.epoch.Add(1)
	o.Step(ctx)
	require.Equal(t, []string{"left-by-a-dead-writer"}, inv.keys())
	require.Zero(t, depth(ctx, t, o))
}
