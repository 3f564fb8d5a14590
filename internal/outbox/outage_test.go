package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// cutOffCache is a cache whose Redis client goes through a proxy the test
// can Block and Open, and a cache on the same prefix that always reaches
// Redis directly (to look at and to set keys by hand).
func cutOffCache(t *testing.T, cfg cachelayer.Config) (cut, direct *cachelayer.Cache, proxy *testsvc.Proxy) {
	t.Helper()
	opts, err := redis.ParseURL(testsvc.RedisURL(t))
	require.NoError(t, err)
	proxy = testsvc.StartProxy(t, opts.Addr)
	opts.Addr = proxy.Addr
	opts.ContextTimeoutEnabled, opts.MaxRetries = true, -1
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	cfg.Prefix = testsvc.Prefix(t)
	cut = cachelayer.New(rdb, &cfg)
	t.Cleanup(func() { _ = cut.Close() })
	direct = cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: cfg.Prefix, OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = direct.Close() })
	return cut, direct, proxy
}

// TestInvalidationWaitsWhileRedisDown: with Redis unreachable and then the
// breaker open, an invalidation is neither skipped nor counted done: its
// key stays pending (this process reads it from Postgres) and its row
// waits. Once Redis is back, the running sweeper (busy while anything is
// pending, though its idle interval is an hour) deletes the key and the
// mark clears.
func TestInvalidationWaitsWhileRedisDown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cache, direct, proxy := cutOffCache(t, cachelayer.Config{BreakerFailures: 2, BreakerCooldown: 50 * time.Millisecond})
	domain := fmt.Sprintf("test-%d", testsvc.NewID())
	o := outbox.New(testsvc.Pool(t), cache, outbox.Config{Domain: domain, Interval: 50 * time.Millisecond, IdleInterval: time.Hour})
	t.Cleanup(func() { require.NoError(t, o.Close()) })
	for _, k := range []string{"a", "b", "c"} {
		require.NoError(t, direct.Set(ctx, k, "stale", time.Minute))
	}

	proxy.Block()
	o.Invalidate(ctx, write(ctx, t, testsvc.Pool(t), o, "a")) // fails at Redis
	o.Invalidate(ctx, write(ctx, t, testsvc.Pool(t), o, "b")) // fails at Redis; the breaker opens
	require.True(t, cache.Stats().BreakerOpen)
	o.Invalidate(ctx, write(ctx, t, testsvc.Pool(t), o, "c")) // not attempted: the breaker is open
	for _, k := range []string{"a", "b", "c"} {
		require.True(t, o.SkipRedis(k), "%s: reads go to Postgres while its invalidation is pending", k)
		require.True(t, exists(ctx, t, direct, k), "%s: still in Redis", k)
	}
	require.NoError(t, o.FlushDone(ctx))
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(3), st.Depth, "no row counted done")
	require.Equal(t, 3, st.Pending)

	proxy.Open()
	require.Eventually(t, func() bool {
		st, err := o.Stats(ctx)
		return err == nil && st.Pending == 0 && st.Depth == 0
	}, 20*time.Second, 10*time.Millisecond, "the sweeper delivers once Redis is back")
	for _, k := range []string{"a", "b", "c"} {
		require.False(t, o.SkipRedis(k))
		require.False(t, exists(ctx, t, direct, k), "%s deleted", k)
	}
	require.Equal(t, int64(3), mustStats(ctx, t, o).Swept)
}

func mustStats(ctx context.Context, t *testing.T, o *outbox.Outbox) outbox.Stats {
	t.Helper()
	st, err := o.Stats(ctx)
	require.NoError(t, err)
	return st
}
