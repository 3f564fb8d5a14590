package credits_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// tracedRepos returns a Store and a Cached on one pool whose queries tr
// records (only those of a context from tr.Record).
func tracedRepos(t *testing.T) (tr *testsvc.RoundTripTracer, store *credits.Store, cached *credits.Cached) {
	t.Helper()
	tr = &testsvc.RoundTripTracer{}
	pool := testsvc.NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tr })
	store = credits.NewStore(pool)
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t), OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = cache.Close() })
	cached = credits.NewCached(store, cache, &credits.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = cached.Close() })
	return tr, store, cached
}

// TestWriteRoundTrips: every kind of change costs exactly one statement
// sent to Postgres — through the plain Store and through Cached (whose
// statement also writes the outbox row) — and bad input none. An
// idempotent replay and a conflict are answered by the same one statement.
func TestWriteRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	tr, store, cached := tracedRepos(t)
	for _, repo := range []struct {
		name string
		repo credits.Repo
	}{{"store", store}, {"cached", cached}} {
		t.Run(repo.name, func(t *testing.T) {
			r := repo.repo
			user := testsvc.NewID()
			keyed := credits.Change{UserID: user, Type: enrichment, Amount: 40, IdempotencyKey: "rt-add"}
			var first credits.Balance
			steps := []struct {
				name  string
				call  func(context.Context) error
				want  error // nil: succeeds
				trips []string
			}{
				{"Add creating the row", func(ctx context.Context) error {
					_, err := r.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100})
					return err
				}, nil, []string{"CreditApply"}},
				{"Add", func(ctx context.Context) error {
					_, err := r.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 5})
					return err
				}, nil, []string{"CreditApply"}},
				{"Deduct", func(ctx context.Context) error {
					_, err := r.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 5})
					return err
				}, nil, []string{"CreditApply"}},
				{"Add with idempotency key", func(ctx context.Context) (err error) {
					first, err = r.Add(ctx, keyed)
					return err
				}, nil, []string{"CreditApply"}},
				{"Deduct with idempotency key", func(ctx context.Context) error {
					_, err := r.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 3, IdempotencyKey: "rt-deduct"})
					return err
				}, nil, []string{"CreditApply"}},
				{"replay", func(ctx context.Context) error {
					b, err := r.Add(ctx, keyed)
					if err == nil && b != first {
						t.Errorf("replay returned %+v, the first result was %+v", b, first)
					}
					return err
				}, nil, []string{"CreditApply"}},
				{"conflict", func(ctx context.Context) error {
					_, err := r.Deduct(ctx, keyed)
					return err
				}, credits.ErrIdempotencyConflict, []string{"CreditApply"}},
				{"insufficient", func(ctx context.Context) error {
					_, err := r.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: credits.MaxAmount})
					return err
				}, credits.ErrInsufficient, []string{"CreditApply"}},
				{"insufficient with idempotency key", func(ctx context.Context) error {
					_, err := r.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: credits.MaxAmount, IdempotencyKey: "rt-big"})
					return err
				}, credits.ErrInsufficient, []string{"CreditApply"}},
				{"bad input", func(ctx context.Context) error {
					_, err := r.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 0})
					return err
				}, credits.ErrInvalid, nil},
			}
			for _, s := range steps {
				tr.Step(ctx, t, s.name, s.call, s.want, s.trips)
			}
			b, err := store.Balance(ctx, user, enrichment)
			require.NoError(t, err)
			require.Equal(t, int64(100+5-5+40-3), b.Amount)
			requireLedgerMatches(ctx, t, store, user, enrichment, b)
		})
	}
}

// TestWriteOutboxRowOnlyWithCache: on a database of its own, the outbox
// rows of every change. With no cached repository live, a plain Store (or
// any SQL) writes none: nobody caches. Once a repository with Redis has
// registered its namespace (B), a plain Store's change writes one external
// row naming B's full key (the balance triggers), and B's own change
// exactly one row, its own (the triggers skip the key it records). A
// repository in no-cache mode (A) registers nothing; its change writes its
// own row, kept for instances with Redis, and the triggers' row for B. A
// replay or a refused deduct writes nothing.
func TestWriteOutboxRowOnlyWithCache(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool := testsvc.NewPoolOn(t, testsvc.IsolatedDatabaseURL(t), nil)
	store := credits.NewStore(pool)
	user := testsvc.NewID()
	type row struct {
		Key      string
		External bool
	}
	rowsOf := func() []row {
		rows, err := pool.Query(ctx, `SELECT cache_key, external FROM cache_outbox WHERE cache_key LIKE '%' || $1 ORDER BY id`, credits.Key(user, enrichment))
		require.NoError(t, err)
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		require.NoError(t, err)
		_, err = pool.Exec(ctx, `DELETE FROM cache_outbox`)
		require.NoError(t, err)
		return got
	}

	_, err := store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 10, IdempotencyKey: "s"})
	require.NoError(t, err)
	_, err = store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1})
	require.NoError(t, err)
	require.Empty(t, rowsOf(), "no namespace is live: no row")

	noCache := cachelayer.New(nil, &cachelayer.Config{Prefix: testsvc.Prefix(t) + "a:"})
	a := credits.NewCached(store, noCache, &credits.CachedConfig{SweepInterval: time.Hour})
	t.Cleanup(func() { _ = a.Close() })
	cache := cachelayer.New(testsvc.Redis(t), &cachelayer.Config{Prefix: testsvc.Prefix(t) + "b:"})
	t.Cleanup(func() { _ = cache.Close() })
	b := credits.NewCached(store, cache, &credits.CachedConfig{SweepInterval: time.Hour, SweepIdle: time.Hour})
	t.Cleanup(func() { _ = b.Close() })
	keyA, keyB := noCache.FullKey(credits.Key(user, enrichment)), cache.FullKey(credits.Key(user, enrichment))

	_, err = store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1})
	require.NoError(t, err)
	require.Equal(t, []row{{keyB, true}}, rowsOf(), "a plain Store: the triggers' row for the live namespace")

	_, err = b.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1, IdempotencyKey: "b"})
	require.NoError(t, err)
	require.Equal(t, []row{{keyB, false}}, rowsOf(), "the library's own change: exactly one row, its own")

	_, err = a.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1, IdempotencyKey: "c"})
	require.NoError(t, err)
	require.ElementsMatch(t, []row{{keyA, false}, {keyB, true}}, rowsOf(), "no-cache mode: its own row, and B's")

	_, err = a.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1, IdempotencyKey: "c"})
	require.NoError(t, err)
	_, err = b.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1000})
	require.ErrorIs(t, err, credits.ErrInsufficient)
	require.Empty(t, rowsOf(), "a replay or a refused deduct writes no row")
}

// TestRacingSameKeyRoundTrips: a change whose idempotency key a racing first
// attempt holds (its transaction is open, here held by the test) waits for
// the balance row, and once that attempt commits returns its result,
// applied once. When its own balance change already ran, the statement
// fails as a whole (GHL01) and the store reads the winner's result: the one
// case that costs a second round trip. A deduct that then finds too little
// learns of the key inside its statement: one round trip.
func TestRacingSameKeyRoundTrips(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		start   int64 // balance before the race
		first   int64 // the racing first attempt's delta
		second  credits.Change
		deduct  bool
		want    error
		trips   []string
		balance int64 // after both
	}{
		{"add", 100, 40, credits.Change{Amount: 40}, false, nil,
			[]string{"CreditApply", "CreditLedgerGetByIdempotencyKey"}, 140},
		{"add to a row the first attempt creates", 0, 40, credits.Change{Amount: 40}, false, nil,
			[]string{"CreditApply", "CreditLedgerGetByIdempotencyKey"}, 40},
		{"deduct", 100, -40, credits.Change{Amount: 40}, true, nil,
			[]string{"CreditApply", "CreditLedgerGetByIdempotencyKey"}, 60},
		{"deduct finding too little", 50, -40, credits.Change{Amount: 40}, true, nil,
			[]string{"CreditApply"}, 10},
		{"other amount", 100, 40, credits.Change{Amount: 41}, false, credits.ErrIdempotencyConflict,
			[]string{"CreditApply", "CreditLedgerGetByIdempotencyKey"}, 140},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			tr, store, _ := tracedRepos(t)
			user := testsvc.NewID()
			if tc.start > 0 {
				_, err := store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: tc.start})
				require.NoError(t, err)
			}

			// The first attempt, held open after its statement ran.
			tx, err := testsvc.Pool(t).Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
			var pid int32
			require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
			var outcome string
			var firstBalance, firstVersion int64
			require.NoError(t, tx.QueryRow(ctx,
				`SELECT outcome, balance, version FROM credit_apply($1, $2, $3, '', 'race', NULL, NULL)`,
				user, string(enrichment), tc.first).Scan(&outcome, &firstBalance, &firstVersion))
			require.Equal(t, "applied", outcome)

			c := tc.second
			c.UserID, c.Type, c.IdempotencyKey = user, enrichment, "race"
			type result struct {
				b   credits.Balance
				err error
			}
			done := make(chan result, 1)
			rctx, rt := tr.Record(ctx)
			go func() {
				var r result
				if tc.deduct {
					r.b, r.err = store.Deduct(rctx, c)
				} else {
					r.b, r.err = store.Add(rctx, c)
				}
				done <- r
			}()
			require.Eventually(t, func() bool {
				var waiting bool
				err := testsvc.Pool(t).QueryRow(ctx,
					`SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid)))`, pid).Scan(&waiting)
				return err == nil && waiting
			}, 10*time.Second, 5*time.Millisecond, "the second attempt waits for the first")
			require.NoError(t, tx.Commit(ctx))

			var r result
			select {
			case r = <-done:
			case <-ctx.Done():
				t.Fatal("the second attempt did not finish")
			}
			if tc.want != nil {
				require.ErrorIs(t, r.err, tc.want)
			} else {
				require.NoError(t, r.err)
				require.Equal(t, firstBalance, r.b.Amount, "the first attempt's result")
				require.Equal(t, firstVersion, r.b.Version)
			}
			require.Equal(t, tc.trips, rt.Statements(), "the statements sent to Postgres")
			b, err := store.Balance(ctx, user, enrichment)
			require.NoError(t, err)
			require.Equal(t, tc.balance, b.Amount, "applied once")
			requireLedgerMatches(ctx, t, store, user, enrichment, b)
		})
	}
}

// TestWriteWithoutConnectionIsNotCommitUnknown: a write that cannot get a
// connection (Postgres unreachable) certainly sent nothing, so it fails
// with a plain error, not ErrCommitUnknown.
func TestWriteWithoutConnectionIsNotCommitUnknown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool, proxy := testsvc.NewPoolThrough(t, func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
	})
	store := credits.NewStore(pool)
	user := testsvc.NewID()
	_, err := store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1})
	require.NoError(t, err)
	proxy.Block()
	for _, apply := range []func(context.Context, credits.Change) (credits.Balance, error){store.Add, store.Deduct} {
		_, err = apply(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1, IdempotencyKey: "k"})
		require.Error(t, err)
		require.NotErrorIs(t, err, credits.ErrCommitUnknown)
	}
}
