package db_test

import (
	"context"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestMain(m *testing.M) { os.Exit(testsvc.Main(m)) }

type testBundle struct {
	ctx  context.Context
	pool *pgxpool.Pool // on a fresh, unmigrated database of the test's own
	url  string
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	url := testsvc.NewDatabase(t)
	return &testBundle{ctx: ctx, pool: newPool(ctx, t, url), url: url}
}

// newPool returns a pool on url, closed when t ends (before the database is
// dropped: cleanups run last-in first-out).
func newPool(ctx context.Context, t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// latestVersion is the version of the newest embedded migration (files are
// named NNNNN_name.sql; numbers may have gaps, as when branches add
// migrations side by side).
func latestVersion(t *testing.T) int64 {
	t.Helper()
	versions := migrationVersions(t)
	return versions[len(versions)-1]
}

// migrationVersions are the embedded migrations' versions, ascending.
func migrationVersions(t *testing.T) []int64 {
	t.Helper()
	names, err := fs.Glob(db.Migrations(), "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, names)
	versions := make([]int64, len(names))
	for i, name := range names {
		digits, _, _ := strings.Cut(name, "_")
		versions[i], err = strconv.ParseInt(digits, 10, 64)
		require.NoError(t, err, name)
	}
	slices.Sort(versions)
	return versions
}

func dbVersion(ctx context.Context, t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	p, err := db.NewProvider(pool)
	require.NoError(t, err)
	defer p.Close()
	v, err := p.GetDBVersion(ctx)
	require.NoError(t, err)
	return v
}

// schema describes every table, column, constraint and index in the public
// schema, except goose's own bookkeeping table, one line each, sorted.
func schema(ctx context.Context, t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(ctx, `
		SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable
		       || ' default=' || coalesce(column_default, '')
		  FROM information_schema.columns
		 WHERE table_schema = 'public' AND table_name <> 'goose_db_version'
		UNION ALL
		SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
		  FROM pg_constraint
		 WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'goose_db_version'
		UNION ALL
		SELECT 'index ' || indexdef
		  FROM pg_indexes
		 WHERE schemaname = 'public' AND tablename <> 'goose_db_version'
		ORDER BY 1`)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return lines
}

func TestMigrateUpDownUp(t *testing.T) {
	t.Parallel()
	b := setup(t)

	require.NoError(t, db.Migrate(b.ctx, b.pool))
	require.Equal(t, latestVersion(t), dbVersion(b.ctx, t, b.pool))
	migrated := schema(b.ctx, t, b.pool)
	for _, table := range []string{"credit_balances", "credit_ledger", "workflow_definitions", "cache_outbox"} {
		require.Contains(t, strings.Join(migrated, "\n"), "column "+table+".", "table %s", table)
	}

	// Every Down section runs and together they remove everything.
	p, err := db.NewProvider(b.pool)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	down, err := p.DownTo(b.ctx, 0)
	require.NoError(t, err)
	require.Len(t, down, len(migrationVersions(t)))
	require.Equal(t, int64(0), dbVersion(b.ctx, t, b.pool))
	require.Empty(t, schema(b.ctx, t, b.pool), "down to 0 leaves nothing behind")

	// Up again restores exactly the same schema.
	require.NoError(t, db.Migrate(b.ctx, b.pool))
	require.Equal(t, latestVersion(t), dbVersion(b.ctx, t, b.pool))
	require.Equal(t, migrated, schema(b.ctx, t, b.pool))
}

func TestMigrateIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t)

	require.NoError(t, db.Migrate(b.ctx, b.pool))
	migrated := schema(b.ctx, t, b.pool)
	require.NoError(t, db.Migrate(b.ctx, b.pool))
	require.Equal(t, latestVersion(t), dbVersion(b.ctx, t, b.pool))
	require.Equal(t, migrated, schema(b.ctx, t, b.pool))
	requireAppliedOnce(b.ctx, t, b.pool)
}

// TestMigrateConcurrent runs two migrators at once, each with a pool of its
// own as two processes would have: the advisory lock lets one apply the
// migrations while the other waits and then finds nothing to do.
func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pools := []*pgxpool.Pool{b.pool, newPool(b.ctx, t, b.url)}

	start := make(chan struct{})
	errs := make(chan error, len(pools))
	for _, pool := range pools {
		go func() {
			<-start
			errs <- db.Migrate(b.ctx, pool)
		}()
	}
	close(start)
	for range pools {
		select {
		case err := <-errs:
			require.NoError(t, err)
		case <-b.ctx.Done():
			t.Fatal("concurrent migrations did not finish in time")
		}
	}
	require.Equal(t, latestVersion(t), dbVersion(b.ctx, t, b.pool))
	requireAppliedOnce(b.ctx, t, b.pool)
}

// requireAppliedOnce checks goose's bookkeeping: each migration recorded as
// applied exactly once.
func requireAppliedOnce(ctx context.Context, t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	rows, err := pool.Query(ctx, `
		SELECT version_id, count(*) FROM goose_db_version
		 WHERE version_id > 0 AND is_applied GROUP BY version_id ORDER BY version_id`)
	require.NoError(t, err)
	type applied struct {
		Version, Count int64
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[applied])
	require.NoError(t, err)
	versions := migrationVersions(t)
	require.Len(t, got, len(versions))
	for i, a := range got {
		require.Equal(t, applied{Version: versions[i], Count: 1}, a)
	}
}
