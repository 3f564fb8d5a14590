package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/integration_test/testenv"
	"github.com/ghl-agency/ghlcache/internal/outbox"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// invalidator records deleted keys and fails while down is set; while
// disabled is set it is a cache in no-cache mode or closed.
type invalidator struct {
	mu       sync.Mutex
	down     bool
	disabled bool
	deleted  []string
	calls    int
}

func (f *invalidator) DeleteFull(_ context.Context, keys ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down || f.disabled {
		return errors.New("redis down")
	}
	f.deleted = append(f.deleted, keys...)
	return nil
}

func (f *invalidator) Enabled() bool { f.mu.Lock(); defer f.mu.Unlock(); return !f.disabled }

func (f *invalidator) setDown(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }

func (f *invalidator) setDisabled(disabled bool) { f.mu.Lock(); f.disabled = disabled; f.mu.Unlock() }

func (f *invalidator) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.deleted)
}

func setup(t *testing.T) (context.Context, *outbox.Outbox, *invalidator, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	inv := &invalidator{}
	domain := fmt.Sprintf("test-%d", testenv.NewID())
	// The sweeper's own ticks are out of the way: tests call Sweep.
	o := outbox.New(testenv.Pool(t), inv, outbox.Config{Domain: domain, Interval: time.Hour, Batch: 500, MaxAge: 2 * time.Minute})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	return ctx, o, inv, domain
}

func insert(ctx context.Context, t *testing.T, domain, key string, age time.Duration) int64 {
	t.Helper()
	var id int64
	require.NoError(t, testenv.Pool(t).QueryRow(ctx,
		`INSERT INTO cache_outbox (domain, cache_key, created_at) VALUES ($1, $2, now() - make_interval(secs => $3)) RETURNING id`,
		domain, key, age.Seconds()).Scan(&id))
	return id
}

func TestInvalidateRemovesRowAndPendingMark(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	id := insert(ctx, t, domain, "ghl:credits:1:a", 0)
	o.Invalidate(ctx, "ghl:credits:1:a", id)
	require.Equal(t, []string{"ghl:credits:1:a"}, inv.keys())
	require.False(t, o.Pending("ghl:credits:1:a"), "cleared as soon as the delete reached Redis")
	require.Eventually(t, func() bool {
		st, err := o.Stats(ctx)
		return err == nil && st.Depth == 0
	}, 10*time.Second, 5*time.Millisecond, "the remover deletes the row off the write path")
}

func TestCloseRemovesQueuedRows(t *testing.T) {
	t.Parallel()
	ctx, o, _, domain := setup(t)
	for i := range 20 {
		key := fmt.Sprintf("k%d", i)
		o.Invalidate(ctx, key, insert(ctx, t, domain, key, 0))
	}
	require.NoError(t, o.Close())
	var n int
	require.NoError(t, testenv.Pool(t).QueryRow(ctx, `SELECT count(*) FROM cache_outbox WHERE domain = $1`, domain).Scan(&n))
	require.Zero(t, n, "Close flushes the removal queue")
}

func TestFailedInvalidationStaysPendingUntilSwept(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	inv.setDown(true)
	id := insert(ctx, t, domain, "k1", 0)
	o.Invalidate(ctx, "k1", id)
	require.True(t, o.Pending("k1"), "this process reads k1 from Postgres meanwhile")
	require.False(t, o.Pending("k2"))

	require.Error(t, o.Sweep(ctx), "a sweep that cannot delete keeps the rows")
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Depth)
	require.Equal(t, 1, st.Pending)
	require.Equal(t, int64(0), st.Swept)

	inv.setDown(false)
	require.NoError(t, o.Sweep(ctx))
	require.False(t, o.Pending("k1"))
	st, err = o.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Depth)
	require.Equal(t, int64(1), st.Swept)
}

// TestDisabledInvalidatorLeavesRows: in no-cache mode or with a closed
// cache nothing reaches Redis, so no row counts as delivered, none is
// claimed, and nothing is left pending (reads go to Postgres anyway).
func TestDisabledInvalidatorLeavesRows(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	inv.setDisabled(true)
	id := insert(ctx, t, domain, "mine", 0)
	insert(ctx, t, domain, "another instance's", 0)
	o.Invalidate(ctx, "mine", id)
	require.False(t, o.Pending("mine"), "no mark that only another instance's sweep could clear")
	require.Equal(t, 1, inv.calls, "DeleteFull still runs: it forgets the key's in-process loads")
	require.NoError(t, o.Sweep(ctx))
	require.Equal(t, 1, inv.calls, "a disabled sweep claims no rows and deletes no keys")
	require.NoError(t, o.Close())
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), st.Depth, "both rows wait for an instance that can delete their keys")
	require.Zero(t, st.Swept)
}

func TestPendingClearedWhenAnotherInstanceSwept(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	inv.setDown(true)
	id := insert(ctx, t, domain, "k", 0)
	o.Invalidate(ctx, "k", id)
	require.True(t, o.Pending("k"))

	other := outbox.New(testenv.Pool(t), &invalidator{}, outbox.Config{Domain: domain, Interval: time.Hour})
	defer other.Close()
	require.NoError(t, other.Sweep(ctx))

	_ = o.Sweep(ctx) // still down, but it notices the row is gone
	require.False(t, o.Pending("k"))
}

// TestPendingClearedWhenRowNeverCommitted: after an ambiguous COMMIT the
// writer invalidates a row id that may not exist; if the change did not
// commit, the pending mark clears at the next sweep even while Redis is down.
func TestPendingClearedWhenRowNeverCommitted(t *testing.T) {
	t.Parallel()
	ctx, o, inv, _ := setup(t)
	inv.setDown(true)
	o.Invalidate(ctx, "never-committed", 1<<62) // no such row
	require.True(t, o.Pending("never-committed"))
	_ = o.Sweep(ctx)
	require.False(t, o.Pending("never-committed"))
}

func TestSweepDropsExpiredRowsWithoutDelete(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	inv.setDown(true)
	insert(ctx, t, domain, "old", 3*time.Minute) // older than MaxAge (2 min)
	insert(ctx, t, domain, "young", 0)
	require.Error(t, o.Sweep(ctx))
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Depth, "the expired row is dropped even while Redis is down")
	require.Equal(t, int64(1), st.Dropped)
	require.Less(t, st.OldestAge, time.Minute)

	inv.setDown(false)
	require.NoError(t, o.Sweep(ctx))
	require.Equal(t, []string{"young"}, inv.keys(), "expired keys are never deleted")
}

func TestSweepDrainsManyBatches(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	_, err := testenv.Pool(t).Exec(ctx,
		`INSERT INTO cache_outbox (domain, cache_key) SELECT $1, 'key:' || (g % 1100) FROM generate_series(1, 1200) AS g`, domain)
	require.NoError(t, err)
	require.NoError(t, o.Sweep(ctx))
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Depth)
	require.Equal(t, int64(1200), st.Swept)
	require.Len(t, inv.keys(), 1100+100, "each batch deletes its distinct keys once") // 100 keys occur twice, in different batches
	require.Equal(t, 3, inv.calls, "batches of 500")
}

func TestRunningSweeperRepairsWithoutCalls(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inv := &invalidator{}
	domain := fmt.Sprintf("test-%d", testenv.NewID())
	insert(ctx, t, domain, "left-behind", 0)
	o := outbox.New(testenv.Pool(t), inv, outbox.Config{Domain: domain, Interval: 20 * time.Millisecond})
	require.Eventually(t, func() bool { return slices.Contains(inv.keys(), "left-behind") }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, o.Close())
	require.NoError(t, o.Close(), "Close is idempotent")
}
