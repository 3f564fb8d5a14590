package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

func TestMain(m *testing.M) { os.Exit(testsvc.Main(m)) }

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStoreLifecycle(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store := workflows.NewStore(testsvc.Pool(t))

	created, err := store.Save(ctx, workflows.Definition{Name: "onboarding", Spec: json.RawMessage(`{ "steps": [ {"id": 1} ],  "a": true }`)})
	require.NoError(t, err)
	require.Positive(t, created.ID)
	require.Equal(t, int64(1), created.Version)
	require.Equal(t, time.UTC, created.UpdatedAt.Location())
	require.NotContains(t, string(created.Spec), " ", "spec is returned compact")
	require.JSONEq(t, `{"steps":[{"id":1}],"a":true}`, string(created.Spec))

	got, err := store.Definition(ctx, created.ID)
	require.NoError(t, err)
	require.Equal(t, created, got, "a read returns exactly what Save returned")

	created.Name = "onboarding v2"
	created.Spec = json.RawMessage(`{"steps":[]}`)
	updated, err := store.Save(ctx, created)
	require.NoError(t, err)
	require.Equal(t, int64(2), updated.Version)
	require.Equal(t, created.ID, updated.ID)
	require.Equal(t, "onboarding v2", updated.Name)

	_, err = store.Save(ctx, created) // still version 1: stale
	require.ErrorIs(t, err, workflows.ErrConflict)

	got, err = store.Definition(ctx, created.ID)
	require.NoError(t, err)
	require.Equal(t, updated, got)

	require.NoError(t, store.Delete(ctx, created.ID))
	_, err = store.Definition(ctx, created.ID)
	require.ErrorIs(t, err, workflows.ErrNotFound)
	require.ErrorIs(t, store.Delete(ctx, created.ID), workflows.ErrNotFound)
	_, err = store.Save(ctx, updated)
	require.ErrorIs(t, err, workflows.ErrNotFound, "update of a deleted id")
}

func TestStoreConcurrentSavesOfOneVersion(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store := workflows.NewStore(testsvc.Pool(t))
	d, err := store.Save(ctx, workflows.Definition{Name: "race", Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)

	const n = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, conflict int
	for range n {
		wg.Go(func() {
			_, err := store.Save(ctx, d)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, workflows.ErrConflict):
				conflict++
			default:
				t.Errorf("save: %v", err)
			}
		})
	}
	wg.Wait()
	require.Equal(t, 1, ok)
	require.Equal(t, n-1, conflict)
	got, err := store.Definition(ctx, d.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2), got.Version)
}

func TestStoreBadInput(t *testing.T) {
	ctx := testContext(t)
	pool := testsvc.Pool(t)
	store := workflows.NewStore(pool)
	existing, err := store.Save(ctx, workflows.Definition{Name: "keep", Spec: json.RawMessage(`{"k":1}`)})
	require.NoError(t, err)

	spec := json.RawMessage(`{"ok":true}`)
	cases := []struct {
		name string
		d    workflows.Definition
	}{
		{"empty name", workflows.Definition{Spec: spec}},
		{"long name", workflows.Definition{Name: strings.Repeat("n", workflows.MaxNameBytes+1), Spec: spec}},
		{"name not utf-8", workflows.Definition{Name: "\xff", Spec: spec}},
		{"negative id", workflows.Definition{ID: -1, Name: "x", Spec: spec}},
		{"update without version", workflows.Definition{ID: existing.ID, Name: "x", Spec: spec}},
		{"nil spec", workflows.Definition{Name: "x"}},
		{"blank spec", workflows.Definition{Name: "x", Spec: json.RawMessage("   ")}},
		{"array spec", workflows.Definition{Name: "x", Spec: json.RawMessage(`[1,2]`)}},
		{"string spec", workflows.Definition{Name: "x", Spec: json.RawMessage(`"s"`)}},
		{"null spec", workflows.Definition{Name: "x", Spec: json.RawMessage(`null`)}},
		{"broken json", workflows.Definition{Name: "x", Spec: json.RawMessage(`{"a":`)}},
		{"trailing garbage", workflows.Definition{Name: "x", Spec: json.RawMessage(`{"a":1} x`)}},
		{"NUL in spec string", workflows.Definition{Name: "x", Spec: json.RawMessage(`{"a":"\u0000"}`)}},
		{"spec too large", workflows.Definition{Name: "x", Spec: json.RawMessage(`{"a":"` + strings.Repeat("z", workflows.MaxSpecBytes) + `"}`)}},
	}
	var before int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) + coalesce(sum(version), 0) FROM workflow_definitions`).Scan(&before))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := store.Save(ctx, tc.d)
			require.ErrorIs(t, err, workflows.ErrInvalid)
		})
	}
	for _, id := range []int64{0, -5} {
		_, err := store.Definition(ctx, id)
		require.ErrorIs(t, err, workflows.ErrInvalid)
		require.ErrorIs(t, store.Delete(ctx, id), workflows.ErrInvalid)
	}
	var after int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) + coalesce(sum(version), 0) FROM workflow_definitions`).Scan(&after))
	require.Equal(t, before, after, "bad input wrote nothing")
	got, err := store.Definition(ctx, existing.ID)
	require.NoError(t, err)
	require.Equal(t, existing, got)
}
