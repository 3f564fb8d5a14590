package main

import (
	"io/fs"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/integration_test/testenv"
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
	dbURL := testenv.NewDatabase(t)
	names := migrationNames(t)
	latest := strconv.Itoa(len(names))
	migrate := func(sub string) result {
		t.Helper()
		r := cli(t, "--database-url", dbURL, "migrate", sub)
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
	down := migrate("down").stdout
	require.Contains(t, down, "rolled back "+names[len(names)-1])
	require.Equal(t, strconv.Itoa(len(names)-1)+"\n", migrate("version").stdout)
	require.Regexp(t, `(?m)^\d+\s+pending\s+-\s+`+names[len(names)-1]+`$`, migrate("status").stdout)

	// Down to nothing, and once more, is fine; up again restores the schema.
	for range len(names) - 1 {
		migrate("down")
	}
	require.Equal(t, "0\n", migrate("version").stdout)
	require.Contains(t, migrate("down").stdout, "nothing to roll back")
	require.Contains(t, migrate("up").stdout, "schema at version "+latest)
}

// TestMigrateEnv checks the environment fallback and that a flag overrides
// it. It sets process environment, so it does not run in parallel.
func TestMigrateEnv(t *testing.T) {
	dbURL := testenv.NewDatabase(t)

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
