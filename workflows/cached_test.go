package workflows_test

import (
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

type instance struct {
	repo   *workflows.Cached
	cache  *cachelayer.Cache
	tracer *testsvc.QueryTracer // counts definition reads
}

func newInstance(t *testing.T, prefix string) *instance {
	t.Helper()
	tracer := &testsvc.QueryTracer{Match: "FROM workflow_definitions"}
	pool := testsvc.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: prefix, OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	repo := workflows.NewCached(workflows.NewStore(pool), cache, &workflows.CachedConfig{SweepInterval: 100 * time.Millisecond})
	t.Cleanup(func() { _ = repo.Close() })
	return &instance{repo: repo, cache: cache, tracer: tracer}
}

func TestCachedNegativeCaching(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newInstance(t, testsvc.Prefix(t))
	const missing = int64(1) << 60

	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			_, err := a.repo.Definition(ctx, missing)
			if !errorsIsNotFound(err) {
				t.Errorf("want ErrNotFound, got %v", err)
			}
		})
	}
	wg.Wait()
	for range 100 {
		_, err := a.repo.Definition(ctx, missing)
		require.ErrorIs(t, err, workflows.ErrNotFound)
	}
	require.Equal(t, int64(1), a.tracer.Count(), "200 reads of a missing id → 1 query")
	_, err := a.cache.TTL(ctx, workflows.Key(missing))
	require.ErrorIs(t, err, cachelayer.ErrNotFound, "TTL of a not-found marker is ErrNotFound")
}

func errorsIsNotFound(err error) bool { return errors.Is(err, workflows.ErrNotFound) }

func itoa(i int) string { return strconv.Itoa(i) }

// TestCachedCreateHidesNoMarker: a "not found" cached for an id before it
// exists never hides the definition once Save created it. Not parallel: it
// predicts the next ids of the shared sequence.
func TestCachedCreateHidesNoMarker(t *testing.T) {
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	a, b := newInstance(t, prefix), newInstance(t, prefix)
	var seq int64
	require.NoError(t, testsvc.Pool(t).QueryRow(ctx,
		`SELECT nextval(pg_get_serial_sequence('workflow_definitions', 'id'))`).Scan(&seq))
	for id := seq + 1; id <= seq+3; id++ {
		_, err := b.repo.Definition(ctx, id)
		require.ErrorIs(t, err, workflows.ErrNotFound)
	}
	d, err := a.repo.Save(ctx, workflows.Definition{Name: "fresh", Spec: json.RawMessage(`{"x":1}`)})
	require.NoError(t, err)
	require.Equal(t, seq+1, d.ID)
	got, err := b.repo.Definition(ctx, d.ID)
	require.NoError(t, err, "the create deleted the not-found marker")
	require.Equal(t, d, got)
}

func TestCachedSaveVisibleEverywhere(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testsvc.Prefix(t)
	insts := []*instance{newInstance(t, prefix), newInstance(t, prefix), newInstance(t, prefix)}
	d, err := insts[0].repo.Save(ctx, workflows.Definition{Name: "flow", Spec: json.RawMessage(`{"v":0}`)})
	require.NoError(t, err)

	for round := range 20 {
		for _, in := range insts { // every instance has the current version cached
			got, err := in.repo.Definition(ctx, d.ID)
			require.NoError(t, err)
			require.Equal(t, d, got)
		}
		writer := insts[round%len(insts)]
		d.Spec = json.RawMessage(`{"v":` + itoa(round+1) + `}`)
		d, err = writer.repo.Save(ctx, d)
		require.NoError(t, err)
		require.Equal(t, int64(round+2), d.Version)
		for _, in := range insts {
			got, err := in.repo.Definition(ctx, d.ID)
			require.NoError(t, err)
			require.Equal(t, d, got, "round %d: the save is visible from every instance", round)
		}
	}

	stale := d
	stale.Version--
	_, err = insts[1].repo.Save(ctx, stale)
	require.ErrorIs(t, err, workflows.ErrConflict)

	require.NoError(t, insts[2].repo.Delete(ctx, d.ID))
	for _, in := range insts {
		_, err := in.repo.Definition(ctx, d.ID)
		require.ErrorIs(t, err, workflows.ErrNotFound)
	}
	require.ErrorIs(t, insts[0].repo.Delete(ctx, d.ID), workflows.ErrNotFound)
}

func TestCachedHitIsDeepEqual(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newInstance(t, testsvc.Prefix(t))
	d, err := a.repo.Save(ctx, workflows.Definition{Name: "ünïcödé ✓", Spec: json.RawMessage(`{"b": [1, 2.5, "x"], "a": {"nested": null}}`)})
	require.NoError(t, err)
	// Until its outbox row is gone, any test's sweeper may delete the key
	// once more (and make a read load again).
	require.Eventually(t, func() bool {
		var n int
		err := testsvc.Pool(t).QueryRow(ctx, `SELECT count(*) FROM cache_outbox WHERE cache_key = $1 AND done_at IS NULL`,
			a.cache.FullKey(workflows.Key(d.ID))).Scan(&n)
		return err == nil && n == 0
	}, 10*time.Second, 10*time.Millisecond, "the save's outbox row removed")
	for range 3 {
		got, err := a.repo.Definition(ctx, d.ID)
		require.NoError(t, err)
		require.Equal(t, d, got)
	}
	require.Equal(t, int64(1), a.tracer.Count(), "one load, then hits")
	ttl, err := a.cache.TTL(ctx, workflows.Key(d.ID))
	require.NoError(t, err)
	require.Greater(t, ttl, 270*time.Second, "definitions are cached 300 s minus at most 10%")
}

// TestCachedSpecWithHTMLCharactersRoundTrips: a hit returns the store's
// Spec byte for byte, also when it holds & < > (which encoding/json would
// escape by default), and callers served by one load own their Spec.
func TestCachedSpecWithHTMLCharactersRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newInstance(t, testsvc.Prefix(t))
	saved, err := a.repo.Save(ctx, workflows.Definition{Name: "html",
		Spec: json.RawMessage(`{"body":"<p>a & b</p>","cond":"x > 1 && y < 2"}`)})
	require.NoError(t, err)
	stored, err := workflows.NewStore(testsvc.Pool(t)).Definition(ctx, saved.ID)
	require.NoError(t, err)

	const n = 20
	got := make([]workflows.Definition, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d, err := a.repo.Definition(ctx, saved.ID)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = d
		})
	}
	wg.Wait()
	for i := range n {
		require.Equal(t, stored, got[i], "a cold read equals the store's")
		got[i].Spec[0] = ' ' // each request may change its own copy
	}
	hit, err := a.repo.Definition(ctx, saved.ID)
	require.NoError(t, err)
	require.Equal(t, stored, hit, "a hit equals the store's, byte for byte")
	require.Positive(t, a.cache.Stats().Hits)
}
