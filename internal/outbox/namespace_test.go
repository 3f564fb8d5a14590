package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// TestNamespaceSettlesAfterWritersInProgress: a repository that registers
// its namespace while a transaction holds a write lock on its table (that
// transaction's trigger may have run without the namespace) reads every
// key from Postgres until that transaction has ended; so after a refresh
// that finds the namespace lapsed. Close shortens the namespace's life to
// MaxAge.
func TestNamespaceSettlesAfterWritersInProgress(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool := testsvc.NewPoolOn(t, testsvc.IsolatedDatabaseURL(t), nil)
	writer, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = writer.Rollback(context.Background()) }()
	_, err = writer.Exec(ctx, `INSERT INTO credit_balances VALUES (1, 'x', 1, 1, now())`)
	require.NoError(t, err)

	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(pool, &invalidator{}, outbox.Config{
		Domain: domain, Tables: []string{"credit_balances"}, EpochPoll: time.Hour, Now: clk.Now, NoListen: true,
	})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	require.True(t, o.SkipRedis("any"), "a writer was in progress at the registration")
	require.False(t, mustStats(ctx, t, o).Settled)
	o.Step(ctx)
	require.True(t, o.SkipRedis("any"), "still in progress")
	require.NoError(t, writer.Commit(ctx))
	o.Step(ctx)
	require.False(t, o.SkipRedis("any"), "settled once it ended")
	require.True(t, mustStats(ctx, t, o).Settled)

	// Lapsed (here by hand), with a writer in progress: found at the next
	// refresh, read from Postgres again until that writer ends.
	_, err = pool.Exec(ctx, `UPDATE cache_namespaces SET live_until = now() - interval '1 s' WHERE domain = $1`, domain)
	require.NoError(t, err)
	writer, err = pool.Begin(ctx)
	require.NoError(t, err)
	_, err = writer.Exec(ctx, `UPDATE credit_balances SET balance = 2`)
	require.NoError(t, err)
	clk.Advance(30 * time.Second) // a refresh is due, and so is a sweep
	o.Step(ctx)
	require.True(t, o.SkipRedis("any"), "lapsed, a writer in progress")
	require.NoError(t, writer.Rollback(ctx))
	o.Step(ctx)
	require.False(t, o.SkipRedis("any"))
	var live time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT live_until FROM cache_namespaces WHERE domain = $1`, domain).Scan(&live))
	require.WithinDuration(t, time.Now().Add(11*time.Minute), live, 30*time.Second, "live again: MaxAge + 5 min")

	require.NoError(t, o.Close())
	require.NoError(t, pool.QueryRow(ctx, `SELECT live_until FROM cache_namespaces WHERE domain = $1`, domain).Scan(&live))
	require.WithinDuration(t, time.Now().Add(6*time.Minute), live, 30*time.Second, "Close: MaxAge from now")
}

// TestUnrefreshedNamespaceStopsReadingRedis: while refreshes fail
// (Postgres cut off), the repository keeps reading through Redis for half
// the namespace's margin, then reads from Postgres, before the namespace
// could lapse (nothing it fills may outlive it); the next refresh that
// succeeds trusts it again.
func TestUnrefreshedNamespaceStopsReadingRedis(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, proxy := testsvc.NewPoolThrough(t, nil)
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(pool, &invalidator{}, outbox.Config{Domain: domain, EpochPoll: time.Hour, Now: clk.Now, NoListen: true})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	require.False(t, o.SkipRedis("any"))

	proxy.Block()
	for range 149 { // 149 s: refreshes (due every 30 s) fail
		clk.Advance(time.Second)
		o.Step(ctx)
	}
	require.False(t, o.SkipRedis("any"), "trusted for 2.5 min after the last refresh")
	clk.Advance(time.Second)
	o.Step(ctx)
	require.True(t, o.SkipRedis("any"), "2.5 min without a refresh")

	proxy.Open()
	clk.Advance(time.Second)
	o.Step(ctx)
	require.False(t, o.SkipRedis("any"), "refreshed: it never lapsed")
}
