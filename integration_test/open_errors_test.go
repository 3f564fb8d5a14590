package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache"
	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// lockedBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestOpenMalformedURLsHidePasswords gives ghlcache.Open the malformed URLs
// of issue 8 (and more): neither its error nor its logs may contain a
// password or a piece of one. No name is sent to a resolver (the pool's
// lookup refuses, quoting the host as a resolver's error would).
func TestOpenMalformedURLsHidePasswords(t *testing.T) {
	t.Parallel()
	noLookup := func(c *pgxpool.Config) {
		c.ConnConfig.LookupFunc = func(_ context.Context, host string) ([]string, error) {
			return nil, fmt.Errorf("lookup %s: no such host", host)
		}
		c.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	var cfgs []ghlcache.Config
	for _, u := range []string{
		"postgres//alice:Secret2@127.0.0.1:1/x",
		"postgres:/alice:Secret2@127.0.0.1:1/x",
		"postgres://alice:Sec@ret2@127.0.0.1:1/x",
		"postgres://alice:Sec@ret2@localhost:1/x",
		"postgres://alice:Secret2@127.0.0.1:port/x",
		"postgres://alice:Secret2@127.0.0.1:1/x?sslmode=bogus",
		"postgres://alice@127.0.0.1:1/x?password=Secret2&sslmode=disable",
		"host=127.0.0.1 port=1 user=alice password = Secret2 sslmode=disable",
		"host=127.0.0.1 port=1 user=alice password='Sec ret2' sslmode=disable",
		"host=127.0.0.1 port=x password=Secret2",
		"alice:Secret2@127.0.0.1:1/x",
	} {
		cfgs = append(cfgs, ghlcache.Config{DatabaseURL: u, ConfigurePool: noLookup})
	}
	for _, u := range []string{
		"redis//:Secret1@127.0.0.1:1",
		"redis:/:Secret1@127.0.0.1:1",
		"redis://:Secret1@127.0.0.1:port/0",
		"redis://:Secret1@127.0.0.1:1/zz",
		"redis://:Sec@ret1@127.0.0.1:1/0", // parses; nothing answers: a logged warning
		"redis://Secret1@127.0.0.1:1/0",
	} {
		cfgs = append(cfgs, ghlcache.Config{DatabaseURL: testsvc.DatabaseURL(t), RedisURL: u})
	}
	for _, cfg := range cfgs {
		t.Run(cfg.DatabaseURL+" "+cfg.RedisURL, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, 30*time.Second)
			var logs lockedBuffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			repos, err := ghlcache.Open(ctx, cfg)
			shown := logs.String()
			if err != nil {
				shown += err.Error()
			} else {
				require.NoError(t, repos.Close())
				require.NotEmpty(t, shown, "a Redis that does not answer is logged")
			}
			for _, p := range []string{"Secret1", "Secret2", "ret1", "ret2", "Sec ret2"} {
				require.NotContains(t, shown, p)
			}
		})
	}
}

// TestOpenWithoutSchema: with Config.Migrate false, a database never
// migrated, or migrated to an older version, is ErrSchemaMissing with the
// advice, not a "relation does not exist" on the first request.
func TestOpenWithoutSchema(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	dbURL := testsvc.NewDatabase(t)
	open := func(migrate bool) error {
		t.Helper()
		repos, err := ghlcache.Open(ctx, ghlcache.Config{DatabaseURL: dbURL, Migrate: migrate})
		if err == nil {
			require.NoError(t, repos.Close())
		} else {
			require.Nil(t, repos)
		}
		return err
	}

	err := open(false)
	require.ErrorIs(t, err, ghlcache.ErrSchemaMissing)
	require.ErrorContains(t, err, "set Config.Migrate or run ghlcache migrate up")
	require.ErrorContains(t, err, fmt.Sprintf("at schema version 0, this build needs %d", db.LatestVersion()))

	require.NoError(t, open(true))
	require.NoError(t, open(false), "migrated: nothing to say")

	// One migration rolled back: out of date.
	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	defer pool.Close()
	p, err := db.NewProvider(pool)
	require.NoError(t, err)
	defer p.Close()
	_, err = p.Down(ctx)
	require.NoError(t, err)
	previous, err := db.AppliedVersion(ctx, pool) // the migration before the latest (versions may have gaps)
	require.NoError(t, err)
	require.Less(t, previous, db.LatestVersion())
	err = open(false)
	require.ErrorIs(t, err, ghlcache.ErrSchemaMissing)
	require.ErrorContains(t, err, fmt.Sprintf("at schema version %d, this build needs %d", previous, db.LatestVersion()))
}
