package workflows_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

// TestCachedCommitReplyLost: a Save and then a Delete whose statement (in
// autocommit, its own COMMIT) reached Postgres but whose reply was lost
// return ErrCommitUnknown, and the writer invalidated the definition
// anyway: its next read is what Postgres holds, not its cached copy.
func TestCachedCommitReplyLost(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	// Armed just before the Save and the Delete, whose statements are then
	// the next ones on the pool that name a WorkflowDefinition query (its
	// outbox remover and sweeper run only cache_outbox queries).
	lose := &testsvc.LostExecReplyTracer{Match: "-- name: WorkflowDefinition"}
	pool, proxy := testsvc.NewPoolThrough(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = lose })
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	writer := workflows.NewCached(workflows.NewStore(pool), cache, &workflows.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = writer.Close() })
	store := workflows.NewStore(testsvc.Pool(t)) // what Postgres holds

	d, err := writer.Save(ctx, workflows.Definition{Name: "flow", Spec: json.RawMessage(`{"v":1}`)})
	require.NoError(t, err)
	got, err := writer.Definition(ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, d, got) // cached now

	d.Spec = json.RawMessage(`{"v":2}`)
	lose.Arm(proxy)
	_, err = writer.Save(ctx, d)
	require.ErrorIs(t, err, workflows.ErrCommitUnknown)
	require.Equal(t, int64(1), lose.Fired(), "the statement's reply was the one lost")
	saved, err := store.Definition(ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2), saved.Version, "Postgres did commit the save")
	got, err = writer.Definition(ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, saved, got, "the writer reads the committed version, not its cached one")

	lose.Arm(proxy)
	err = writer.Delete(ctx, d.ID)
	require.ErrorIs(t, err, workflows.ErrCommitUnknown)
	require.Equal(t, int64(2), lose.Fired())
	_, err = store.Definition(ctx, d.ID)
	require.ErrorIs(t, err, workflows.ErrNotFound, "Postgres did commit the delete")
	_, err = writer.Definition(ctx, d.ID)
	require.ErrorIs(t, err, workflows.ErrNotFound, "the writer does not serve the deleted definition from its cache")
}
