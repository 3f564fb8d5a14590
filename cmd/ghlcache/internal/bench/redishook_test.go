package bench

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestRedisCounterCountsCommandsAndRoundTrips(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	opts, err := redis.ParseURL(testsvc.RedisURL(t))
	require.NoError(t, err)
	opts.PoolSize = 1 // one connection, set up before counting (its HELLO and CLIENT SETINFO go through hooks too)
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	c := &RedisCounter{}
	rdb.AddHook(c)
	// Set the connection up first: go-redis sends HELLO and CLIENT SETINFO
	// through the hooks (again on a connection's first pipeline).
	require.NoError(t, rdb.Ping(ctx).Err())
	_, err = rdb.Pipelined(ctx, func(p pipeliner) error { p.Ping(ctx); return nil })
	require.NoError(t, err)
	base := c.Counts()
	key := testsvc.Prefix(t) + "k"
	require.ErrorIs(t, rdb.Get(ctx, key).Err(), redisNil)
	require.Equal(t, RedisCounts{Commands: 1, RoundTrips: 1}, c.Counts().Sub(base))
	_, err = rdb.Pipelined(ctx, func(p pipeliner) error {
		p.Set(ctx, key, "v", time.Minute)
		p.Get(ctx, key)
		p.Unlink(ctx, key)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, RedisCounts{Commands: 4, RoundTrips: 2}, c.Counts().Sub(base))
}

func TestQueryCounterCountsABatchAsOneRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c := &QueryCounter{}
	pool := testsvc.NewPool(t, func(cfg *pgxConfig) { cfg.ConnConfig.Tracer = c })
	_, err := pool.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	before := c.Counts()
	b := &pgx.Batch{}
	b.Queue("SELECT 1")
	b.Queue("SELECT 2")
	require.NoError(t, pool.SendBatch(ctx, b).Close())
	require.Equal(t, QueryCounts{RoundTrips: 1, Total: 2}, c.Counts().Sub(before))
}

type (
	pipeliner = redis.Pipeliner
	pgxConfig = pgxpool.Config
)

var redisNil = redis.Nil
