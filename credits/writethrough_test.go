package credits_test

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// newWriteThroughInstance is newInstance with CachedConfig.WriteThrough.
func newWriteThroughInstance(t *testing.T, prefix string) *instance {
	t.Helper()
	return newInstanceWith(t, prefix, "", &credits.CachedConfig{SweepInterval: 100 * time.Millisecond, WriteThrough: true})
}

// TestCachedWriteThrough: with WriteThrough, a change to a cached balance
// leaves the new balance in Redis — the next read in every instance is a
// hit of exactly what Postgres holds, with no SELECT — while a change to an
// uncached balance leaves the key empty, and the outbox row is done.
func TestCachedWriteThrough(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	a, b := newWriteThroughInstance(t, prefix), newWriteThroughInstance(t, prefix)
	store := credits.NewStore(testsvc.Pool(t))
	user := testsvc.NewID()

	_, err := a.repo.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
	require.NoError(t, err)
	exists, err := a.cache.Exists(ctx, credits.Key(user, enrichment))
	require.NoError(t, err)
	require.False(t, exists, "a change to an uncached balance leaves its key empty")
	old := mustBalance(ctx, t, b.repo, user) // cached now
	require.Equal(t, int64(100), old.Amount)

	wrote, err := a.repo.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 30, IdempotencyKey: "wt-1"})
	require.NoError(t, err)
	truth, err := store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, truth, wrote)
	selects := a.tracer.Count() + b.tracer.Count()
	require.Equal(t, truth, mustBalance(ctx, t, a.repo, user), "the writer reads its write")
	require.Equal(t, truth, mustBalance(ctx, t, b.repo, user), "another instance reads the write")
	require.Equal(t, selects, a.tracer.Count()+b.tracer.Count(), "both reads were hits: no SELECT")
	st, err := a.repo.OutboxStats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Pending, "the replace counts as the delivered invalidation")
	require.Eventually(t, func() bool { return outboxRows(ctx, t, a.cache.FullKey(credits.Key(user, enrichment))) == 0 },
		10*time.Second, 10*time.Millisecond, "the outbox row is done")
}

// TestCachedWriteThroughRaces: writers in two instances race readers in
// both, over a few keys (every change replaces or deletes while fills,
// lease waits and sweeps go on). No read that begins after a write returned
// gets an older version, and after quiescence every instance reads what
// Postgres holds.
func TestCachedWriteThroughRaces(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	insts := []*instance{newWriteThroughInstance(t, prefix), newWriteThroughInstance(t, prefix)}
	const keys = 8
	base := testsvc.NewID() * 100
	var floor [keys]atomic.Int64 // highest version a completed write returned, per key
	for k := range keys {
		b, err := insts[0].repo.Add(ctx, credits.Change{UserID: base + int64(k), Type: enrichment, Amount: 1_000_000})
		require.NoError(t, err)
		floor[k].Store(b.Version)
	}
	var wg sync.WaitGroup
	var stale atomic.Int64
	const writers, readers, ops = 4, 8, 150
	for w := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range ops {
				k := r.IntN(keys)
				b, err := insts[r.IntN(2)].repo.Deduct(ctx, credits.Change{UserID: base + int64(k), Type: enrichment, Amount: 1})
				if err != nil {
					t.Error(err)
					return
				}
				for cur := floor[k].Load(); b.Version > cur && !floor[k].CompareAndSwap(cur, b.Version); cur = floor[k].Load() {
				}
			}
		})
	}
	for g := range readers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 2))
			for range 3 * ops {
				k := r.IntN(keys)
				min := floor[k].Load()
				b, err := insts[r.IntN(2)].repo.Balance(ctx, base+int64(k), enrichment)
				if err != nil {
					t.Error(err)
					return
				}
				if b.Version < min {
					stale.Add(1)
				}
			}
		})
	}
	wg.Wait()
	require.Zero(t, stale.Load(), "reads that began after a write returned got an older version")
	store := credits.NewStore(testsvc.Pool(t))
	for _, in := range insts {
		require.NoError(t, in.repo.Sweep(ctx))
	}
	for k := range keys {
		truth, err := store.Balance(ctx, base+int64(k), enrichment)
		require.NoError(t, err)
		for i, in := range insts {
			got, err := in.repo.Balance(ctx, base+int64(k), enrichment)
			require.NoError(t, err)
			require.Equal(t, truth, got, "key %d in instance %d after quiescence", k, i)
		}
	}
}
