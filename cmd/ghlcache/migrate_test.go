package main

import (
	"context"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// migrationNames returns the embedded migration files, oldest first.
func migrationNames(t *testing.T) []string {
	t.Helper()
	names, err := fs.Glob(db.Migrations(), "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, names)
	return names
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	dbURL := testsvc.NewDatabase(t)
	names := migrationNames(t)
	latest := strconv.Itoa(len(names))
	migrate := func(sub ...string) result {
		t.Helper()
		r := cli(t, append([]string{"--database-url", dbURL, "migrate"}, sub...)...)
		require.NoError(t, r.err, "migrate %s: stderr %s", sub, r.stderr)
		require.Empty(t, r.stderr)
		return r
	}

	require.Equal(t, "0\n", migrate("version").stdout)
	status := migrate("status").stdout
	for _, name := range names {
		require.Regexp(t, `(?m)^\d+\s+pending\s+-\s+`+name+`$`, status)
	}

	up := migrate("up").stdout
	for _, name := range names {
		require.Contains(t, up, "applied     "+name)
	}
	require.Contains(t, up, "schema at version "+latest)
	require.Equal(t, latest+"\n", migrate("version").stdout)
	require.Contains(t, migrate("up").stdout, "nothing to apply; schema at version "+latest)
	status = migrate("status").stdout
	for _, name := range names {
		require.Regexp(t, `(?m)^\d+\s+applied\s+\d{4}-\d\d-\d\dT\S+Z\s+`+name+`$`, status)
	}

	// Down rolls back exactly one migration, the latest.
	down := migrate("down", "--yes").stdout
	require.Contains(t, down, "rolled back "+names[len(names)-1])
	require.Equal(t, strconv.Itoa(len(names)-1)+"\n", migrate("version").stdout)
	require.Regexp(t, `(?m)^\d+\s+pending\s+-\s+`+names[len(names)-1]+`$`, migrate("status").stdout)

	// Down to nothing, and once more, is fine; up again restores the schema.
	for range len(names) - 1 {
		migrate("down", "--yes")
	}
	require.Equal(t, "0\n", migrate("version").stdout)
	require.Contains(t, migrate("down").stdout, "nothing to roll back", "nothing to refuse either")
	require.Contains(t, migrate("up").stdout, "schema at version "+latest)
}

// TestMigrateDownNeedsYes: rolling back drops tables and their rows, so
// without --yes migrate down only says what it would drop on which database.
func TestMigrateDownNeedsYes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dbURL := testsvc.NewDatabase(t)
	dbName := bench.DatabaseName(dbURL)
	names := migrationNames(t)
	r := cli(t, "migrate", "up", "--database-url", dbURL)
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, fmt.Sprintf("database %q at postgres://", dbName), "up names the database it changes")
	for range len(names) - 1 {
		r = cli(t, "migrate", "down", "--yes", "--database-url", dbURL)
		require.NoError(t, r.err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "INSERT INTO credit_balances (user_id, credit_type, balance, version) VALUES (1, 'sms', 500, 1)")
	require.NoError(t, err)

	r = cli(t, "migrate", "down", "--database-url", dbURL)
	require.Equal(t, 2, r.code, "refused like a usage error, as cache del-prefix without --yes")
	require.Empty(t, r.stdout)
	msg := r.err.Error()
	require.Contains(t, msg, "would roll back "+names[0])
	require.Contains(t, msg, fmt.Sprintf("on database %q at postgres://", dbName))
	require.Contains(t, msg, "table credit_ledger (0 rows), table credit_balances (1 rows)")
	require.Contains(t, msg, "add --yes")
	var balance int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT balance FROM credit_balances WHERE user_id = 1").Scan(&balance))
	require.EqualValues(t, 500, balance, "nothing was dropped")

	r = cli(t, "migrate", "down", "--yes", "--database-url", dbURL)
	require.NoError(t, r.err)
	require.Contains(t, r.stdout, fmt.Sprintf("database %q at postgres://", dbName))
	require.Contains(t, r.stdout, "rolled back "+names[0])
	require.Contains(t, r.stdout, "schema at version 0")
}

// TestMigrateEnv checks the environment fallback and that a flag overrides
// it. It sets process environment, so it does not run in parallel.
func TestMigrateEnv(t *testing.T) {
	dbURL := testsvc.NewDatabase(t)

	t.Setenv("DATABASE_URL", dbURL)
	r := cli(t, "migrate", "version")
	require.NoError(t, r.err)
	require.Equal(t, "0\n", r.stdout)

	// A flag wins over a bad environment variable...
	t.Setenv("DATABASE_URL", "postgres://u:"+password+"@127.0.0.1:1/x")
	r = cli(t, "migrate", "version", "--database-url", dbURL)
	require.NoError(t, r.err)
	require.Equal(t, "0\n", r.stdout)

	// ...which is used, and redacted, when there is no flag.
	r = cli(t, "migrate", "version")
	require.Error(t, r.err)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.err.Error(), "connect to postgres postgres://u:xxxxx@127.0.0.1:1/x")
	requireNoSecret(t, r)
}

func TestMigrateDatabaseDown(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"postgres://u:" + password + "@127.0.0.1:1/x",            // nothing listening
		"postgres://u:" + password + "@127.0.0.1:port/x",         // unparsable port
		"postgres://u:" + password + "@127.0.0.1:1/x?sslmode=no", // bad option
		"host=127.0.0.1 port=1 user=u password=" + password,      // key/value form
	} {
		for _, sub := range []string{"up", "down", "status", "version"} {
			r := cli(t, "migrate", sub, "--database-url", url)
			require.Error(t, r.err, "migrate %s %s", sub, url)
			require.Equal(t, 1, r.code)
			require.Empty(t, r.stdout)
			require.True(t, strings.HasPrefix(r.stderr, "ghlcache: "), r.stderr)
			requireNoSecret(t, r)
		}
	}
}
