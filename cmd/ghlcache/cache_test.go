package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestCacheCommands(t *testing.T) {
	t.Parallel()
	prefix := testsvc.Prefix(t)
	redisURL := testsvc.RedisURL(t)
	c := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: prefix})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	type balance struct {
		UserID int64
		Amount int64
	}
	require.NoError(t, c.Set(ctx, "credits:7:enrichment", balance{7, 1234}, time.Minute))
	require.NoError(t, c.Set(ctx, "credits:8:enrichment", balance{8, 1}, time.Minute))
	// What credits.Cached stores: a balance in its compact form.
	require.NoError(t, c.Set(ctx, "credits:6:sms", credits.Balance{UserID: 6, Type: "sms", Amount: 77, Version: 3,
		UpdatedAt: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}, time.Minute))
	require.NoError(t, c.Set(ctx, "workflow:3:definition", map[string]any{"ID": 3}, time.Minute))
	_, err := c.Incr(ctx, "rate:7:api", 5, time.Minute)
	require.NoError(t, err)
	_, err = cachelayer.Fetch(ctx, c, "workflow:404:definition", time.Minute, func(context.Context) (int, error) {
		return 0, cachelayer.ErrNotFound
	})
	require.ErrorIs(t, err, cachelayer.ErrNotFound)

	cacheCLI := func(args ...string) result {
		return cli(t, append(append([]string{"cache"}, args...), "--redis-url", redisURL, "--prefix", prefix)...)
	}

	r := cacheCLI("get", "credits:7:enrichment")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "key    "+prefix+"credits:7:enrichment")
	require.Contains(t, r.stdout, `"Amount": 1234`)
	require.Regexp(t, `ttl\s+\d+(\.\d+)?s`, r.stdout)

	r = cacheCLI("get", "credits:6:sms")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, `"Amount": 77`)
	require.Contains(t, r.stdout, `"UpdatedAt": "2026-12-01T00:00:00Z"`)
	require.NoError(t, c.Delete(ctx, "credits:6:sms")) // the counts below are of the other keys

	r = cacheCLI("get", "rate:7:api")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "5 (counter)")

	r = cacheCLI("get", "workflow:404:definition")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "not found")

	r = cacheCLI("get", "credits:9:enrichment")
	require.ErrorContains(t, r.err, "not cached")
	require.Equal(t, 1, r.code)

	r = cacheCLI("stats")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "used_memory_human")
	require.Contains(t, r.stdout, `keys under "`+prefix+`": 5`)
	require.Regexp(t, `credits:\*\s+2`, r.stdout)
	require.Regexp(t, `(?m)^\s+hits\s+2$`, r.stdout)

	r = cacheCLI("del", "credits:7:enrichment", "credits:9:enrichment")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "deleted 2 key(s) (1 existed)")
	found, err := c.Exists(ctx, "credits:7:enrichment")
	require.NoError(t, err)
	require.False(t, found)

	// del-prefix refuses without --yes, and says how many it would delete.
	r = cacheCLI("del-prefix", "credits:")
	require.Equal(t, 2, r.code)
	require.ErrorContains(t, r.err, "would delete 1 key(s)")
	found, err = c.Exists(ctx, "credits:8:enrichment")
	require.NoError(t, err)
	require.True(t, found)

	r = cacheCLI("del-prefix", "credits:", "--yes")
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, "deleted 1 key(s)")
	found, err = c.Exists(ctx, "credits:8:enrichment")
	require.NoError(t, err)
	require.False(t, found)
	found, err = c.Exists(ctx, "workflow:3:definition")
	require.NoError(t, err)
	require.True(t, found, "other keys stay")
}

func TestCacheErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"cache", "stats", "--redis-url", "redis://u:" + password + "@127.0.0.1:1/0"}, 1},
		{[]string{"cache", "get", "x", "--redis-url", "redis://u:" + password + "@127.0.0.1:port/0"}, 1},
		{[]string{"cache", "get", "--redis-url", testsvc.RedisURL(t)}, 2},
		{[]string{"cache", "del", "--redis-url", testsvc.RedisURL(t)}, 2},
		{[]string{"cache", "del-prefix", "", "--redis-url", testsvc.RedisURL(t)}, 2},
		{[]string{"--no-cache", "cache", "stats"}, 2},
	} {
		r := cli(t, tc.args...)
		require.Error(t, r.err, "%v", tc.args)
		require.Equal(t, tc.code, r.code, "%v: %v", tc.args, r.err)
		requireNoSecret(t, r)
	}
}
