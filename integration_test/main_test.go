// Package integration_test holds cross-package tests of ghlcache against the
// real Postgres and Redis: a linearizability-style history check of the
// cached credits repository, Redis dying under load, and the wiring helper.
package integration_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/integration_test/testenv"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// instance is one service process: its own pool, Redis client and cache.
type instance struct {
	credits *credits.Cached
	cache   *cachelayer.Cache
	tracer  *testsvc.QueryTracer
}

// newInstance starts an instance whose cache uses rdb (closed with t) and
// the shared key prefix.
func newInstance(t *testing.T, prefix string, rdb redis.UniversalClient, cfg *cachelayer.Config) *instance {
	t.Helper()
	tracer := &testsvc.QueryTracer{Match: "FROM credit_balances"}
	pool := testsvc.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	c := cachelayer.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Prefix = prefix
	cache := cachelayer.New(rdb, &c)
	t.Cleanup(func() { _ = cache.Close() })
	repo := credits.NewCached(credits.NewStore(pool), cache, &credits.CachedConfig{SweepInterval: 100 * time.Millisecond})
	t.Cleanup(func() { _ = repo.Close() })
	return &instance{credits: repo, cache: cache, tracer: tracer}
}

// boundedClient returns a client of addr whose every call is bounded the way
// cachelayer.Open bounds its own.
func boundedClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{
		Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}
