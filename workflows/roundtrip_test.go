package workflows_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

// TestWriteRoundTrips: every Save and Delete, successful or not, costs
// exactly one statement sent to Postgres — through the plain Store and
// through Cached (whose statement also writes the outbox row) — and bad
// input none.
func TestWriteRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	tr := &testsvc.RoundTripTracer{}
	pool := testsvc.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tr })
	store := workflows.NewStore(pool)
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	cached := workflows.NewCached(store, cache, &workflows.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = cached.Close() })

	for _, repo := range []struct {
		name string
		repo workflows.Repo
	}{{"store", store}, {"cached", cached}} {
		t.Run(repo.name, func(t *testing.T) {
			r := repo.repo
			var d workflows.Definition
			steps := []struct {
				name  string
				call  func(context.Context) error
				want  error
				trips []string
			}{
				{"Save insert", func(ctx context.Context) (err error) {
					d, err = r.Save(ctx, workflows.Definition{Name: "rt", Spec: json.RawMessage(`{"v":1}`)})
					return err
				}, nil, []string{"WorkflowDefinitionInsert"}},
				{"Save update", func(ctx context.Context) (err error) {
					d.Spec = json.RawMessage(`{"v":2}`)
					d, err = r.Save(ctx, d)
					return err
				}, nil, []string{"WorkflowDefinitionUpdate"}},
				{"Save conflict", func(ctx context.Context) error {
					stale := d
					stale.Version--
					_, err := r.Save(ctx, stale)
					return err
				}, workflows.ErrConflict, []string{"WorkflowDefinitionUpdate"}},
				{"Save of a missing id", func(ctx context.Context) error {
					_, err := r.Save(ctx, workflows.Definition{ID: testsvc.NewID(), Version: 1, Name: "x", Spec: json.RawMessage(`{}`)})
					return err
				}, workflows.ErrNotFound, []string{"WorkflowDefinitionUpdate"}},
				{"Save bad input", func(ctx context.Context) error {
					_, err := r.Save(ctx, workflows.Definition{Name: "x", Spec: json.RawMessage(`[]`)})
					return err
				}, workflows.ErrInvalid, nil},
				{"Delete", func(ctx context.Context) error { return r.Delete(ctx, d.ID) },
					nil, []string{"WorkflowDefinitionDelete"}},
				{"Delete missing", func(ctx context.Context) error { return r.Delete(ctx, d.ID) },
					workflows.ErrNotFound, []string{"WorkflowDefinitionDelete"}},
			}
			for _, s := range steps {
				tr.Step(ctx, t, s.name, s.call, s.want, s.trips)
			}
			require.Equal(t, int64(2), d.Version)
		})
	}
}

// TestWriteOutboxRowOnlyWithCache: on a database of its own, with no cached
// repository live, a plain Store writes no outbox row; once one with Redis
// has registered (B), a plain Store's change writes one external row for
// B, and B's own changes exactly one row each, their own: a create's names
// the new id's full key; none for a conflict or a missing id.
func TestWriteOutboxRowOnlyWithCache(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool := testsvc.NewPoolOn(t, testsvc.IsolatedDatabaseURL(t), nil)
	store := workflows.NewStore(pool)
	type row struct {
		Key      string
		External bool
	}
	rowsOf := func(id int64) []row {
		rows, err := pool.Query(ctx, `SELECT cache_key, external FROM cache_outbox WHERE cache_key LIKE '%' || $1 ORDER BY id`, workflows.Key(id))
		require.NoError(t, err)
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		require.NoError(t, err)
		return got
	}

	plain, err := store.Save(ctx, workflows.Definition{Name: "plain", Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)
	_, err = store.Save(ctx, plain)
	require.NoError(t, err)
	require.Empty(t, rowsOf(plain.ID), "no namespace is live: no row")

	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t)})
	t.Cleanup(func() { _ = cache.Close() })
	cached := workflows.NewCached(store, cache, &workflows.CachedConfig{SweepInterval: time.Hour, SweepIdle: time.Hour})
	t.Cleanup(func() { _ = cached.Close() })
	require.NoError(t, store.Delete(ctx, plain.ID))
	require.Equal(t, []row{{cache.FullKey(workflows.Key(plain.ID)), true}}, rowsOf(plain.ID), "a plain Store: the triggers' row")

	d, err := cached.Save(ctx, workflows.Definition{Name: "cached", Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)
	want := row{cache.FullKey(workflows.Key(d.ID)), false}
	require.Equal(t, []row{want}, rowsOf(d.ID), "a create's row names the new id's full key")
	_, err = cached.Save(ctx, d)
	require.NoError(t, err)
	_, err = cached.Save(ctx, d) // stale
	require.ErrorIs(t, err, workflows.ErrConflict)
	require.NoError(t, cached.Delete(ctx, d.ID))
	require.ErrorIs(t, cached.Delete(ctx, d.ID), workflows.ErrNotFound)
	require.Equal(t, []row{want, want, want}, rowsOf(d.ID), "a row per change, none for a conflict or a missing id")
}

// TestWriteWithoutConnectionIsNotCommitUnknown: a Save or Delete that
// cannot get a connection (Postgres unreachable) certainly sent nothing, so
// it fails with a plain error, not ErrCommitUnknown.
func TestWriteWithoutConnectionIsNotCommitUnknown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool, proxy := testsvc.NewPoolThrough(t, func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
	})
	store := workflows.NewStore(pool)
	d, err := store.Save(ctx, workflows.Definition{Name: "x", Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)
	proxy.Block()
	_, err = store.Save(ctx, workflows.Definition{Name: "y", Spec: json.RawMessage(`{}`)})
	require.Error(t, err)
	require.NotErrorIs(t, err, workflows.ErrCommitUnknown)
	_, err = store.Save(ctx, d)
	require.Error(t, err)
	require.NotErrorIs(t, err, workflows.ErrCommitUnknown)
	err = store.Delete(ctx, d.ID)
	require.Error(t, err)
	require.NotErrorIs(t, err, workflows.ErrCommitUnknown)
}
