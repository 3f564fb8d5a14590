package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// TestOutboxCommands: on a database of its own, "outbox status" shows a
// running repository's namespace and LISTEN connection; once it has
// stopped (its namespace still live for its TTL + 1 min), a change made in
// SQL waits in the outbox, "outbox status" counts it, and "outbox sweep"
// deletes its key and marks it done.
func TestOutboxCommands(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dbURL := testsvc.IsolatedDatabaseURL(t)
	prefix := testsvc.Prefix(t)
	pool := testsvc.NewPoolOn(t, dbURL, nil)
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: prefix})
	t.Cleanup(func() { _ = cache.Close() })
	repo := credits.NewCached(credits.NewStore(pool), cache, nil)
	t.Cleanup(func() { _ = repo.Close() })
	require.Eventually(t, func() bool {
		st, err := repo.OutboxStats(ctx)
		return err == nil && st.Listening
	}, 10*time.Second, time.Millisecond)
	outboxCLI := func(args ...string) result {
		return cli(t, append(append([]string{"outbox"}, args...), "--database-url", dbURL, "--redis-url", testsvc.RedisURL(t))...)
	}

	r := outboxCLI("status")
	require.NoError(t, r.err)
	require.Regexp(t, `(?m)^credits\s+0\s+-\s+1\s+"`+prefix+`" \(until`, r.stdout)
	require.Regexp(t, `(?m)^workflows\s+0\s+-\s+0\s+none`, r.stdout)
	require.Contains(t, r.stdout, "this process: LISTEN ok")

	const user = 77
	require.NoError(t, repo.Close())
	require.NoError(t, cache.Set(ctx, credits.Key(user, "sms"), 1, time.Minute))
	sql, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer sql.Close(context.Background())
	_, err = sql.Exec(ctx, `INSERT INTO credit_balances VALUES ($1, 'sms', 5, 1, now())`, user)
	require.NoError(t, err)

	r = outboxCLI("status")
	require.NoError(t, r.err)
	require.Regexp(t, `(?m)^credits\s+1\s+\d`, r.stdout, "one waiting row, with its age")

	r = outboxCLI("sweep")
	require.NoError(t, r.err)
	require.Regexp(t, `(?m)^credits\s+1\s+0$`, r.stdout)
	found, err := cache.Exists(ctx, credits.Key(user, "sms"))
	require.NoError(t, err)
	require.False(t, found, "the sweep deleted the key")

	r = cli(t, "outbox", "status", "--database-url", testsvc.NewDatabase(t))
	require.Equal(t, 1, r.code)
	require.ErrorContains(t, r.err, "run ghlcache migrate up")
	r = cli(t, "outbox", "sweep", "--no-cache", "--database-url", dbURL)
	require.Equal(t, 2, r.code, "a sweep needs Redis")
}
