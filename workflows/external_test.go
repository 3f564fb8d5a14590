package workflows_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

// untilName reads id through repo until its name is want ("" for a
// definition that does not exist).
func untilName(ctx context.Context, t *testing.T, repo *workflows.Cached, id int64, want string) {
	t.Helper()
	for {
		d, err := repo.Definition(ctx, id)
		switch {
		case want == "" && errors.Is(err, workflows.ErrNotFound):
			return
		case err == nil && d.Name == want:
			return
		case err != nil && !errors.Is(err, workflows.ErrNotFound):
			require.NoError(t, err)
		}
		require.NoError(t, ctx.Err(), "definition %d never became %q", id, want)
	}
}

// TestExternalDefinitionWrites: SQL run by a plain connection on
// workflow_definitions — an INSERT of an id both instances had cached as
// not found, an UPDATE, a DELETE, a TRUNCATE — reaches both instances'
// next reads (the definition triggers' rows and notifications); and the
// keys the triggers build equal workflows.Key.
func TestExternalDefinitionWrites(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL := testsvc.IsolatedDatabaseURL(t)
	prefix := testsvc.Prefix(t)
	var insts []*workflows.Cached
	var caches []*cachelayer.Cache
	for range 2 {
		pool := testsvc.NewPoolOn(t, dbURL, nil)
		cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: prefix})
		t.Cleanup(func() { _ = cache.Close() })
		repo := workflows.NewCached(workflows.NewStore(pool), cache, nil)
		t.Cleanup(func() { _ = repo.Close() })
		insts, caches = append(insts, repo), append(caches, cache)
	}
	sql, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sql.Close(context.Background()) })

	const id, other = 4242, 4343
	for _, r := range insts {
		_, err := r.Definition(ctx, id)
		require.ErrorIs(t, err, workflows.ErrNotFound, "cached as not found")
	}
	var last int64
	require.NoError(t, sql.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM cache_outbox`).Scan(&last))
	_, err = sql.Exec(ctx, `INSERT INTO workflow_definitions (id, name, version, spec) VALUES ($1, 'made in SQL', 1, '{}'), ($2, 'other', 1, '{}')`, id, other)
	require.NoError(t, err)
	var keys []string
	rows, err := sql.Query(ctx, `SELECT cache_key FROM cache_outbox WHERE id > $1 ORDER BY cache_key`, last)
	require.NoError(t, err)
	keys, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{caches[0].FullKey(workflows.Key(id)), caches[0].FullKey(workflows.Key(other))}, keys,
		"one row per key for the one live namespace, as workflows.Key builds it")
	for _, r := range insts {
		untilName(ctx, t, r, id, "made in SQL")
		untilName(ctx, t, r, other, "other")
	}

	_, err = sql.Exec(ctx, `UPDATE workflow_definitions SET name = 'renamed', version = version + 1 WHERE id = $1`, id)
	require.NoError(t, err)
	for _, r := range insts {
		untilName(ctx, t, r, id, "renamed")
	}
	_, err = sql.Exec(ctx, `DELETE FROM workflow_definitions WHERE id = $1`, id)
	require.NoError(t, err)
	for _, r := range insts {
		untilName(ctx, t, r, id, "")
	}
	_, err = sql.Exec(ctx, `TRUNCATE workflow_definitions`)
	require.NoError(t, err)
	for _, r := range insts {
		untilName(ctx, t, r, other, "")
	}
}
