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

// TestSweepGoesPastFailedKeys: a key whose delete fails (its shard is down)
// holds back neither the other keys of its batch nor the batches behind
// it; its rows keep waiting, and the sweep claims each row once (it does
// not spin on the failing ones).
func TestSweepGoesPastFailedKeys(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, _ := setupWith(t, 10)
	for i := range 25 {
		insert(ctx, t, domain, fmt.Sprintf("k%d", i), 0)
	}
	insert(ctx, t, domain, "k3", 0) // a second row for a failing key, in the last batch
	inv.setFail("k3", "k15")

	err := o.Sweep(ctx)
	require.ErrorIs(t, err, cachelayer.ErrUnavailable, "a sweep that could not delete every key says so, and why")
	require.Equal(t, 3, inv.calls, "batches of 10, 10, 6: past the failures")
	require.Len(t, inv.keys(), 26-3, "every other key deleted")
	require.NotContains(t, inv.keys(), "k3")
	require.NotContains(t, inv.keys(), "k15")
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(3), st.Depth, "only the failing keys' rows wait")
	require.Equal(t, int64(23), st.Swept)

	inv.reset()
	require.Error(t, o.Sweep(ctx))
	require.Equal(t, 1, inv.calls, "the next sweep claims only the waiting rows")
	require.Empty(t, inv.keys())

	inv.setFail()
	require.NoError(t, o.Sweep(ctx))
	require.ElementsMatch(t, []string{"k3", "k15"}, inv.keys())
	require.Zero(t, depth(ctx, t, o))
}

// TestSweepPerKeyWithRedis: the same with a real cache: the keys that can
// be deleted are gone from Redis after one sweep, the failing one is still
// there and its row waits, until its delete succeeds.
func TestSweepPerKeyWithRedis(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	inv := &realInvalidator{Cache: cache}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(testsvc.Pool(t), inv, outbox.Config{Domain: domain, Interval: time.Hour, Batch: 4, EpochPoll: time.Hour})
	t.Cleanup(func() { require.NoError(t, o.Close()) })

	keys := make([]string, 10)
	for i := range keys {
		keys[i] = fmt.Sprintf("entry:%d", i)
		require.NoError(t, cache.Set(ctx, keys[i], "stale", time.Minute))
		insert(ctx, t, domain, cache.FullKey(keys[i]), 0)
	}
	inv.setFail(cache.FullKey("entry:1"))
	require.Error(t, o.Sweep(ctx))
	for i, k := range keys {
		require.Equal(t, i == 1, exists(ctx, t, cache, k), k)
	}
	require.Equal(t, 1, waitingRows(ctx, t, domain))

	inv.setFail()
	require.NoError(t, o.Sweep(ctx))
	require.False(t, exists(ctx, t, cache, "entry:1"))
	require.Zero(t, waitingRows(ctx, t, domain))
}

// TestMootRowsOfFailingKeysOnly: while one key's deletes keep failing, only
// its row is dropped MaxAge after the sweeper first saw it; rows whose keys
// were deleted are done, not dropped.
func TestMootRowsOfFailingKeysOnly(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, clk := setupWith(t, 500)
	insert(ctx, t, domain, "dead-shard", 3*time.Minute)
	insert(ctx, t, domain, "healthy", 3*time.Minute)
	inv.setFail("dead-shard")
	require.Error(t, o.Sweep(ctx))
	clk.Advance(maxAge)
	require.Error(t, o.Sweep(ctx))
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Depth)
	require.Equal(t, int64(1), st.Dropped, "the dead shard's row, seen MaxAge ago")
	require.Equal(t, int64(1), st.Swept, "the healthy key's row is done")
	var done int
	require.NoError(t, testsvc.Pool(t).QueryRow(ctx,
		`SELECT count(*) FROM cache_outbox WHERE domain = $1 AND done_at IS NOT NULL`, domain).Scan(&done))
	require.Equal(t, 1, done, "kept for re-deletes")
}

// TestSweeperLeavesYoungRowsToTheirWriter: the sweeper's own sweeps claim
// no row younger than twice FlushInterval (its writer is most likely
// marking it done: another instance under load would otherwise delete its
// keys a second time), costing one statement while they wait; it keeps
// looking every Interval, and Sweep claims every row.
func TestSweeperLeavesYoungRowsToTheirWriter(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, tracer := tracedPool(t)
	inv := &invalidator{}
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(pool, inv, outbox.Config{
		Domain: domain, Interval: time.Second, IdleInterval: time.Hour,
		FlushInterval: 10 * time.Second, EpochPoll: time.Hour, Now: clk.Now, // a grace of 20 s
	})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	insert(ctx, t, domain, "in-flight", 0)
	insert(ctx, t, domain, "left-behind", time.Minute)

	clk.Advance(time.Second)
	o.Step(ctx)
	require.Equal(t, []string{"left-behind"}, inv.keys())
	before := tracer.Count()
	clk.Advance(time.Second)
	o.Step(ctx)
	require.Equal(t, []string{"left-behind"}, inv.keys(), "still young")
	require.Equal(t, int64(1), tracer.Count()-before, "a look every Interval while a row waits: one statement")

	require.NoError(t, o.Sweep(ctx))
	require.ElementsMatch(t, []string{"left-behind", "in-flight"}, inv.keys())
	require.Zero(t, depth(ctx, t, o))
}
