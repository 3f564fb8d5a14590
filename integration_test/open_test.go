package integration_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache"
	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

func TestOpenWiresBothRepositories(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	tracer := &testsvc.QueryTracer{Match: "FROM credit_balances"}
	repos, err := ghlcache.Open(ctx, ghlcache.Config{
		DatabaseURL: testsvc.DatabaseURL(t),
		RedisURL:    testsvc.RedisURL(t),
		Migrate:     true, // idempotent on the migrated test database
		Cache:       &cachelayer.Config{Prefix: testsvc.Prefix(t)},
		ConfigurePool: func(c *pgxpool.Config) {
			c.ConnConfig.Tracer = tracer
		},
	})
	require.NoError(t, err)
	defer func() { require.NoError(t, repos.Close()) }()

	user := testsvc.NewID()
	added, err := repos.Credits.Add(ctx, credits.Change{UserID: user, Type: "enrichment", Amount: 9})
	require.NoError(t, err)
	for range 2 {
		got, err := repos.Credits.Balance(ctx, user, "enrichment")
		require.NoError(t, err)
		require.Equal(t, added, got)
	}
	d, err := repos.Workflows.Save(ctx, workflows.Definition{Name: "w", Spec: json.RawMessage(`{"a":1}`)})
	require.NoError(t, err)
	got, err := repos.Workflows.Definition(ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, d, got)

	require.Equal(t, int64(1), tracer.Count(), "ConfigurePool's tracer saw the one balance load")
	st := repos.Cache.Stats()
	require.True(t, st.Available)
	require.Positive(t, st.Hits)
	require.True(t, repos.Cache.Health(ctx).Healthy)
	require.NoError(t, repos.Pool.Ping(ctx))
	require.NoError(t, repos.Close(), "Close twice is fine")
}

func TestOpenWithoutRedisIsNoCacheMode(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	repos, err := ghlcache.Open(ctx, ghlcache.Config{DatabaseURL: testsvc.DatabaseURL(t)})
	require.NoError(t, err)
	defer repos.Close()
	user := testsvc.NewID()
	added, err := repos.Credits.Add(ctx, credits.Change{UserID: user, Type: "sms", Amount: 3})
	require.NoError(t, err)
	got, err := repos.Credits.Balance(ctx, user, "sms")
	require.NoError(t, err)
	require.Equal(t, added, got)
	require.False(t, repos.Cache.Stats().Available)
	require.Equal(t, "cache disabled", repos.Cache.Health(ctx).Err)
}

func TestOpenErrorsHidePasswords(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	for i, cfg := range []ghlcache.Config{
		{DatabaseURL: "postgres://u:s3cret@127.0.0.1:1/x?sslmode=disable&connect_timeout=1"},
		{DatabaseURL: "postgres://u:s3cret@127.0.0.1:99999/x"},
		{DatabaseURL: "postgres://u:s3cret@[bad/x"},
		{DatabaseURL: testsvc.DatabaseURL(t), RedisURL: "redis://u:s3cret@[bad/0"},
		{DatabaseURL: testsvc.DatabaseURL(t), RedisURL: "http://u:s3cret@127.0.0.1:6379/0"},
		{DatabaseURL: testsvc.DatabaseURL(t), RedisURL: "redis://u:s3cret@127.0.0.1:6379/notanumber"},
		{},
	} {
		repos, err := ghlcache.Open(ctx, cfg)
		require.Error(t, err, "config %d", i)
		require.Nil(t, repos)
		require.NotContains(t, err.Error(), "s3cret")
	}
}
