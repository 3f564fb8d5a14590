package cachelayer

import (
	"context"
	"errors"
	"testing"
	"time"
)

// vrow is a row with a version the cache can compare.
type vrow struct {
	ID      int64  `json:"id"`
	Version int64  `json:"version"`
	Note    string `json:"note"`
}

func (r vrow) CacheVersion() int64 { return r.Version }

func TestReplace(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	noLoad := func(t *testing.T) func(context.Context) (vrow, error) {
		return func(context.Context) (vrow, error) { t.Error("unexpected load"); return vrow{}, nil }
	}
	fill := func(t *testing.T, c *Cache, v vrow) {
		t.Helper()
		if got, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (vrow, error) { return v, nil }); err != nil || got != v {
			t.Fatalf("fill: %+v, %v", got, err)
		}
	}
	exists := func(t *testing.T, c *Cache) bool {
		t.Helper()
		ok, err := c.Exists(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	t.Run("an older version is replaced", func(t *testing.T) {
		t.Parallel()
		c, _ := realCache(t, nil)
		fill(t, c, vrow{ID: 1, Version: 1})
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 2, Note: "new"}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if got, err := Fetch(ctx, c, "k", time.Minute, noLoad(t)); err != nil || got.Version != 2 || got.Note != "new" {
			t.Fatalf("after Replace: %+v, %v", got, err)
		}
		if st := c.Stats(); st.Invalidations != 1 || st.Loads != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("the same version is kept", func(t *testing.T) {
		t.Parallel()
		c, _ := realCache(t, nil)
		fill(t, c, vrow{ID: 1, Version: 2, Note: "cached"})
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 2, Note: "other"}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if got, _ := Fetch(ctx, c, "k", time.Minute, noLoad(t)); got.Note != "cached" {
			t.Fatalf("got %+v, want the cached copy of the same version", got)
		}
	})
	t.Run("a newer version is deleted, not overwritten", func(t *testing.T) {
		t.Parallel()
		c, _ := realCache(t, nil)
		fill(t, c, vrow{ID: 1, Version: 3})
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 2}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if exists(t, c) {
			t.Fatal("a late Replace of version 2 left a key that held version 3")
		}
	})
	t.Run("an empty key stays empty", func(t *testing.T) {
		t.Parallel()
		c, _ := realCache(t, nil)
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 2}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if exists(t, c) {
			t.Fatal("Replace stored a value in an empty key: a late one could bring back what an invalidation removed")
		}
	})
	t.Run("an unversioned value or a marker is deleted", func(t *testing.T) {
		t.Parallel()
		c, _ := realCache(t, nil)
		if err := c.Set(ctx, "k", sampleRow(1), time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 9}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if exists(t, c) {
			t.Fatal("an unversioned value survived Replace")
		}
		_, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (vrow, error) { return vrow{}, ErrNotFound })
		if !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 1}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if exists(t, c) {
			t.Fatal("a not-found marker survived Replace")
		}
	})
	t.Run("a lease is voided: the loading fill is rejected", func(t *testing.T) {
		t.Parallel()
		c, _ := realCache(t, nil)
		loading, release := make(chan struct{}), make(chan struct{})
		var current = vrow{ID: 1, Version: 1}
		calls := 0
		load := func(context.Context) (vrow, error) {
			calls++
			v := current
			if calls == 1 {
				close(loading)
				<-release
			}
			return v, nil
		}
		got := make(chan vrow, 1)
		go func() { v, _ := Fetch(ctx, c, "k", time.Minute, load); got <- v }()
		<-loading // the read holds the lease and has loaded version 1
		current = vrow{ID: 1, Version: 2}
		if err := Replace(ctx, c, "k", current, time.Minute); err != nil {
			t.Fatal(err)
		}
		close(release)
		if v := <-got; v.Version != 2 {
			t.Fatalf("got %+v: a value loaded before the Replace was answered or cached", v)
		}
		if st := c.Stats(); st.StaleFillsRejected != 1 {
			t.Fatalf("stats %+v, want the fill of version 1 rejected", st)
		}
		if v, _ := Fetch(ctx, c, "k", time.Minute, noLoad(t)); v.Version != 2 {
			t.Fatalf("cached %+v", v)
		}
	})
	t.Run("works after the script cache is flushed", func(t *testing.T) {
		t.Parallel()
		c, rdb := realCache(t, nil)
		fill(t, c, vrow{ID: 1, Version: 1})
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 2}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if v, _ := Fetch(ctx, c, "k", time.Minute, noLoad(t)); v.Version != 2 {
			t.Fatalf("cached %+v", v)
		}
	})
	t.Run("without Redis it fails like a delete", func(t *testing.T) {
		t.Parallel()
		c := New(nil, nil)
		if err := Replace(ctx, c, "k", vrow{ID: 1, Version: 2}, time.Minute); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
		if err := Replace(ctx, c, "", vrow{}, time.Minute); !errors.Is(err, ErrInvalid) {
			t.Fatalf("empty key: %v", err)
		}
	})
}
