package outbox_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// write is a change's outbox side: Record in a transaction of pool,
// committed, returning what the writer passes to Invalidate.
func write(ctx context.Context, t *testing.T, pool *pgxpool.Pool, o *outbox.Outbox, key string) outbox.Invalidation {
	t.Helper()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	inv, err := o.Record(ctx, tx, key)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	return inv
}

// realInvalidator is a real cachelayer.Cache whose deletes of the keys in
// fail fail (the rest reach Redis), and whose TopologyEpoch the test can
// move on by hand (as a failover seen by the cache would).
type realInvalidator struct {
	*cachelayer.Cache
	bump atomic.Uint64

	mu   sync.Mutex
	fail map[string]bool
}

func (r *realInvalidator) setFail(keys ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = make(map[string]bool)
	for _, k := range keys {
		r.fail[k] = true
	}
}

func (r *realInvalidator) DeleteFullEach(ctx context.Context, keys []string) []error {
	r.mu.Lock()
	var pass []string
	var at []int
	for i, k := range keys {
		if !r.fail[k] {
			pass = append(pass, k)
			at = append(at, i)
		}
	}
	r.mu.Unlock()
	if len(pass) == len(keys) {
		return r.Cache.DeleteFullEach(ctx, keys)
	}
	errs := make([]error, len(keys))
	for i := range errs {
		errs[i] = errors.New("shard down")
	}
	got := r.Cache.DeleteFullEach(ctx, pass)
	for j, i := range at {
		if got == nil {
			errs[i] = nil
		} else {
			errs[i] = got[j]
		}
	}
	return errs
}

func (r *realInvalidator) TopologyEpoch() uint64 { return r.Cache.TopologyEpoch() + r.bump.Load() }

// exists reports whether the cache holds key (unprefixed).
func exists(ctx context.Context, t *testing.T, c *cachelayer.Cache, key string) bool {
	t.Helper()
	ok, err := c.Exists(ctx, key)
	require.NoError(t, err)
	return ok
}

// waitingRows counts the rows of domain that wait for their key's delete.
func waitingRows(ctx context.Context, t *testing.T, domain string) int {
	t.Helper()
	var n int
	require.NoError(t, testsvc.Pool(t).QueryRow(ctx,
		`SELECT count(*) FROM cache_outbox WHERE domain = $1 AND done_at IS NULL`, domain).Scan(&n))
	return n
}
