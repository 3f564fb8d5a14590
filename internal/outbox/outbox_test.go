package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestMain(m *testing.M) { os.Exit(testsvc.Main(m)) }

// invalidator records deleted keys and fails while down is set, and the
// keys in fail always; while disabled is set it is a cache in no-cache
// mode or closed. epoch is its TopologyEpoch; onDelete, when set, runs in
// each DeleteFullEach call before it answers.
type invalidator struct {
	mu       sync.Mutex
	down     bool
	disabled bool
	fail     map[string]bool
	deleted  []string
	calls    int
	epoch    atomic.Uint64
	onDelete func(keys []string)
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

func (f *invalidator) DeleteFullEach(_ context.Context, keys []string) []error {
	f.mu.Lock()
	hook := f.onDelete
	f.calls++
	var errs []error
	for i, k := range keys {
		if f.down || f.disabled || f.fail[k] {
			if errs == nil {
				errs = make([]error, len(keys))
			}
			errs[i] = fmt.Errorf("%w: redis down for %s", cachelayer.ErrUnavailable, k)
			continue
		}
		f.deleted = append(f.deleted, k)
	}
	f.mu.Unlock()
	if hook != nil {
		hook(keys)
	}
	return errs
}

func (f *invalidator) DeleteFullPrefix(_ context.Context, prefix string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down || f.disabled || f.fail[prefix+"*"] {
		return 0, fmt.Errorf("%w: redis down for %s*", cachelayer.ErrUnavailable, prefix)
	}
	f.deleted = append(f.deleted, prefix+"*")
	return 0, nil
}

func (f *invalidator) TopologyEpoch() uint64 { return f.epoch.Load() }

func (f *invalidator) setFail(keys ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = make(map[string]bool)
	for _, k := range keys {
		f.fail[k] = true
	}
}

func (f *invalidator) reset() { f.mu.Lock(); f.deleted, f.calls = nil, 0; f.mu.Unlock() }

func (f *invalidator) FullKey(key string) string { return "test:" + key }

func (f *invalidator) Enabled() bool { f.mu.Lock(); defer f.mu.Unlock(); return !f.disabled }

func (f *invalidator) setDown(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }

func (f *invalidator) setDisabled(disabled bool) { f.mu.Lock(); f.disabled = disabled; f.mu.Unlock() }

func (f *invalidator) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.deleted)
}

// clock is the outbox's clock in tests: it moves only when told.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

const maxAge = 2 * time.Minute // of every test outbox

func setup(t *testing.T) (context.Context, *outbox.Outbox, *invalidator, string) {
	t.Helper()
	ctx, o, inv, domain, _ := setupWith(t, 500)
	return ctx, o, inv, domain
}

// setupWith is setup with a batch size, returning the outbox's clock too.
func setupWith(t *testing.T, batch int) (context.Context, *outbox.Outbox, *invalidator, string, *clock) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	inv := &invalidator{}
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	// The sweeper's own ticks are out of the way: tests call Sweep (or Step).
	o := outbox.New(testsvc.Pool(t), inv, outbox.Config{
		Domain: domain, Interval: time.Hour, Batch: batch, MaxAge: maxAge, EpochPoll: time.Hour, Now: clk.Now,
	})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	return ctx, o, inv, domain, clk
}

func depth(ctx context.Context, t *testing.T, o *outbox.Outbox) int64 {
	t.Helper()
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	return st.Depth
}

func insert(ctx context.Context, t *testing.T, domain, key string, age time.Duration) int64 {
	t.Helper()
	var id int64
	require.NoError(t, testsvc.Pool(t).QueryRow(ctx,
		`INSERT INTO cache_outbox (domain, cache_key, created_at) VALUES ($1, $2, now() - make_interval(secs => $3)) RETURNING id`,
		domain, key, age.Seconds()).Scan(&id))
	return id
}

// TestRecordWritesRowInTransaction: Record's row is part of the caller's
// transaction (invisible before its commit), names the full key, and makes
// reads of the key skip Redis while its invalidation is pending; a nil
// Outbox records nothing and the zero Invalidation deletes nothing.
func TestRecordWritesRowInTransaction(t *testing.T) {
	t.Parallel()
	ctx, o, inv, _ := setup(t)
	inv.setDown(true)
	tx, err := testsvc.Pool(t).Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	rec, err := o.Record(ctx, tx, "a")
	require.NoError(t, err)
	require.Equal(t, "test:a", rec.Key)
	require.NotZero(t, rec.ID)
	require.Zero(t, depth(ctx, t, o), "not visible before the commit")

	var none *outbox.Outbox
	nothing, err := none.Record(ctx, tx, "a")
	require.NoError(t, err)
	require.Zero(t, nothing)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, int64(1), depth(ctx, t, o))

	o.Invalidate(ctx, outbox.Invalidation{})
	require.Zero(t, inv.calls, "the zero Invalidation deletes nothing")
	require.False(t, o.SkipRedis("a"))
	o.Invalidate(ctx, rec)
	require.True(t, o.SkipRedis("a"), "the delete failed: reads of a bypass Redis")
	require.False(t, o.SkipRedis("b"))
}

func TestInvalidateRemovesRowAndPendingMark(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	id := insert(ctx, t, domain, "ghl:credits:1:a", 0)
	o.Invalidate(ctx, outbox.Invalidation{Key: "ghl:credits:1:a", ID: id})
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
		o.Invalidate(ctx, outbox.Invalidation{Key: key, ID: insert(ctx, t, domain, key, 0)})
	}
	require.NoError(t, o.Close())
	var waiting, done int
	require.NoError(t, testsvc.Pool(t).QueryRow(ctx,
		`SELECT count(*) FILTER (WHERE done_at IS NULL), count(*) FILTER (WHERE done_at IS NOT NULL) FROM cache_outbox WHERE domain = $1`,
		domain).Scan(&waiting, &done))
	require.Zero(t, waiting, "Close flushes the queue of rows to mark done")
	require.Equal(t, 20, done, "done rows are kept for re-deletes after a topology change")
}

func TestFailedInvalidationStaysPendingUntilSwept(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	inv.setDown(true)
	id := insert(ctx, t, domain, "k1", 0)
	o.Invalidate(ctx, outbox.Invalidation{Key: "k1", ID: id})
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
	o.Invalidate(ctx, outbox.Invalidation{Key: "mine", ID: id})
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
	o.Invalidate(ctx, outbox.Invalidation{Key: "k", ID: id})
	require.True(t, o.Pending("k"))

	other := outbox.New(testsvc.Pool(t), &invalidator{}, outbox.Config{Domain: domain, Interval: time.Hour})
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
	o.Invalidate(ctx, outbox.Invalidation{Key: "never-committed", ID: 1 << 62}) // no such row
	require.True(t, o.Pending("never-committed"))
	_ = o.Sweep(ctx)
	require.False(t, o.Pending("never-committed"))
}

// TestSweepDeletesKeysOfOldRows: with Redis reachable a sweep deletes the
// key of every row, however old its created_at: the row's transaction may
// have committed long after it began, so the entry may still be stale.
func TestSweepDeletesKeysOfOldRows(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	insert(ctx, t, domain, "old", time.Hour) // older than MaxAge by created_at
	insert(ctx, t, domain, "young", 0)
	require.NoError(t, o.Sweep(ctx))
	require.ElementsMatch(t, []string{"old", "young"}, inv.keys())
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Depth)
	require.Equal(t, int64(2), st.Swept)
	require.Zero(t, st.Dropped, "nothing is dropped without a delete while deletes succeed")
}

// TestSweepDropsRowsOnlyMaxAgeAfterSeeingThem: while deletes fail, a row
// that is old by created_at is dropped only once this process has seen it
// (after its commit) at least MaxAge before; a young row is never dropped.
func TestSweepDropsRowsOnlyMaxAgeAfterSeeingThem(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, clk := setupWith(t, 500)
	inv.setDown(true)
	insert(ctx, t, domain, "old", 3*time.Minute)
	insert(ctx, t, domain, "young", 0)
	require.Error(t, o.Sweep(ctx))
	require.Equal(t, int64(2), depth(ctx, t, o), "first seen now: it may have committed just now")

	clk.Advance(maxAge - time.Nanosecond)
	require.Error(t, o.Sweep(ctx))
	require.Equal(t, int64(2), depth(ctx, t, o))

	clk.Advance(time.Nanosecond)
	require.Error(t, o.Sweep(ctx))
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Depth, "seen MaxAge ago: its entry has expired, the row is moot")
	require.Equal(t, int64(1), st.Dropped)

	inv.setDown(false)
	require.NoError(t, o.Sweep(ctx))
	require.Equal(t, []string{"young"}, inv.keys())
	require.Zero(t, depth(ctx, t, o))
}

// TestDisabledInvalidatorDropsOnlyMootRows: a no-cache (or closed)
// instance never deletes a key, but it drops rows it saw MaxAge ago, so a
// deployment without Redis does not grow the table without bound.
func TestDisabledInvalidatorDropsOnlyMootRows(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, clk := setupWith(t, 500)
	inv.setDisabled(true)
	insert(ctx, t, domain, "old", 3*time.Minute)
	insert(ctx, t, domain, "young", 0)
	require.NoError(t, o.Sweep(ctx))
	require.Equal(t, int64(2), depth(ctx, t, o))
	clk.Advance(maxAge)
	require.NoError(t, o.Sweep(ctx))
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Depth, "only the moot row goes")
	require.Equal(t, int64(1), st.Dropped)
	require.Zero(t, inv.calls, "no key deleted, none tried")
}

// TestDropMootSeesEveryRowAndLateCommits: the rows a failing sweeper looks
// at come in pages of Batch; every row is seen, including one whose long
// transaction began before the others (a smaller id, an old created_at)
// and committed after the pages went past it; it is dropped MaxAge after
// it was first seen, not after it began.
func TestDropMootSeesEveryRowAndLateCommits(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain, clk := setupWith(t, 10)
	inv.setDown(true)
	long, err := testsvc.Pool(t).Begin(ctx)
	require.NoError(t, err)
	defer long.Rollback(ctx) //nolint:errcheck // no-op after Commit
	_, err = long.Exec(ctx, `INSERT INTO cache_outbox (domain, cache_key, created_at) VALUES ($1, 'late', now() - interval '1 hour')`, domain)
	require.NoError(t, err)
	for i := range 25 {
		insert(ctx, t, domain, fmt.Sprintf("k%d", i), 3*time.Minute)
	}
	for range 3 { // pages of 10, 10, 5
		require.Error(t, o.Sweep(ctx))
	}
	require.NoError(t, long.Commit(ctx))
	clk.Advance(maxAge)
	require.Error(t, o.Sweep(ctx))
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(25), st.Dropped, "all 25 seen MaxAge ago, over three pages")
	require.Equal(t, int64(1), st.Depth, "the late commit was seen only now")

	clk.Advance(maxAge - time.Nanosecond)
	require.Error(t, o.Sweep(ctx))
	require.Equal(t, int64(1), depth(ctx, t, o))
	clk.Advance(time.Nanosecond)
	require.Error(t, o.Sweep(ctx))
	require.Zero(t, depth(ctx, t, o))
}

// TestLongTransactionKeyIsDeleted: a write transaction outlives MaxAge
// before it commits, so its row is "older than MaxAge" by created_at the
// moment it becomes visible, while the entry it names is stale. The sweep
// deletes that key (real Redis) instead of dropping the row.
func TestLongTransactionKeyIsDeleted(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const tinyMaxAge = 50 * time.Millisecond
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t)})
	t.Cleanup(func() { _ = cache.Close() })
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(testsvc.Pool(t), cache, outbox.Config{Domain: domain, Interval: time.Hour, MaxAge: tinyMaxAge})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	require.NoError(t, cache.Set(ctx, "entry", "stale", time.Minute))

	tx, err := testsvc.Pool(t).Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	_, err = tx.Exec(ctx, `INSERT INTO cache_outbox (domain, cache_key) VALUES ($1, $2)`, domain, cache.FullKey("entry"))
	require.NoError(t, err)
	for { // hold the transaction open until its row counts as older than MaxAge
		var old bool
		require.NoError(t, tx.QueryRow(ctx, `SELECT clock_timestamp() - now() > make_interval(secs => $1)`, 2*tinyMaxAge.Seconds()).Scan(&old))
		if old {
			break
		}
		require.NoError(t, ctx.Err())
		time.Sleep(10 * time.Millisecond) // polling with a deadline (ctx)
	}
	require.NoError(t, tx.Commit(ctx))

	require.NoError(t, o.Sweep(ctx))
	exists, err := cache.Exists(ctx, "entry")
	require.NoError(t, err)
	require.False(t, exists, "the stale entry was deleted, not left to expire")
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Depth)
	require.Equal(t, int64(1), st.Swept)
	require.Zero(t, st.Dropped)
}

func TestSweepDrainsManyBatches(t *testing.T) {
	t.Parallel()
	ctx, o, inv, domain := setup(t)
	_, err := testsvc.Pool(t).Exec(ctx,
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
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	insert(ctx, t, domain, "left-behind", 0)
	o := outbox.New(testsvc.Pool(t), inv, outbox.Config{Domain: domain, Interval: 20 * time.Millisecond})
	require.Eventually(t, func() bool { return slices.Contains(inv.keys(), "left-behind") }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, o.Close())
	require.NoError(t, o.Close(), "Close is idempotent")
}
