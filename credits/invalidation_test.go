package credits_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/integration_test/testenv"
)

// TestCachedCommitReplyLost: the COMMIT of a deduct reaches Postgres and
// commits, but its reply is lost. The deduct returns ErrCommitUnknown, the
// writer invalidated the key anyway (its next read is the committed
// balance, not its cached one), and a retry with the same idempotency key
// returns the first result without applying it again.
func TestCachedCommitReplyLost(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lose := &testenv.LostReplyTracer{SQL: "commit"}
	pool, proxy := testenv.NewPoolThrough(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = lose })
	cache := cachelayer.New(testenv.Redis(t), &cachelayer.Config{Prefix: testenv.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	writer := credits.NewCached(credits.NewStore(pool), cache, &credits.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = writer.Close() })

	user := testenv.NewID()
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
	require.Equal(t, int64(1), lose.Fired(), "the COMMIT's reply was the one lost")

	committed, err := credits.NewStore(testenv.Pool(t)).Balance(ctx, user, enrichment)
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
	require.Eventually(t, func() bool { return outboxRows(ctx, t, cache.FullKey(credits.Key(user, enrichment))) == 0 },
		10*time.Second, 10*time.Millisecond, "the invalidation's outbox row is removed")
}

// outboxRows counts the outbox rows naming fullKey.
func outboxRows(ctx context.Context, t *testing.T, fullKey string) int {
	t.Helper()
	var n int
	require.NoError(t, testenv.Pool(t).QueryRow(ctx, `SELECT count(*) FROM cache_outbox WHERE cache_key = $1`, fullKey).Scan(&n))
	return n
}
