package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// TestNotifiedSweepTakesExternalRowsOnly: a notification wakes the sweeper
// at once (no sweep is due on its schedule, driven here by a clock), and
// that sweep claims the triggers' external rows only, not a row of the
// library's own (its writer's to mark) however old; nor does it postpone
// the regular sweep, which takes that row when due.
func TestNotifiedSweepTakesExternalRowsOnly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inv := &invalidator{}
	clk := &clock{now: time.Now()}
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(testsvc.Pool(t), inv, outbox.Config{
		Domain: domain, Interval: time.Second, IdleInterval: 10 * time.Second, EpochPoll: time.Hour, Now: clk.Now,
	})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	require.NoError(t, o.Sweep(ctx)) // the schedule starts: the next sweep is due in 10 s (simulated)
	o.Step(ctx)
	require.Eventually(t, func() bool { return mustStats(ctx, t, o).Listening }, 10*time.Second, time.Millisecond)

	insert(ctx, t, domain, "library", time.Minute)
	_, err := testsvc.Pool(t).Exec(ctx, `INSERT INTO cache_outbox (domain, cache_key, created_at, external) VALUES ($1, 'external', now(), true)`, domain)
	require.NoError(t, err)
	clk.Advance(9500 * time.Millisecond)
	_, err = testsvc.Pool(t).Exec(ctx, `SELECT pg_notify($1, '')`, outbox.Channel(domain))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return slices.Contains(inv.keys(), "external") }, 10*time.Second, time.Millisecond)
	require.Equal(t, []string{"external"}, inv.keys(), "the notified sweep left the library's row")
	require.Equal(t, int64(1), mustStats(ctx, t, o).Notifications)

	clk.Advance(500 * time.Millisecond) // 10 s after the last regular sweep
	o.Step(ctx)
	require.Equal(t, []string{"external", "library"}, inv.keys(), "the regular sweep was not postponed")
	require.Zero(t, mustStats(ctx, t, o).Depth)
}
