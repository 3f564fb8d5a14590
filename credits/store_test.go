package credits_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestMain(m *testing.M) { os.Exit(testsvc.Main(m)) }

const enrichment credits.Type = "enrichment"

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newStore(t *testing.T) *credits.Store {
	t.Helper()
	return credits.NewStore(testsvc.Pool(t))
}

func TestStoreBalanceOfUnknownUserIsZero(t *testing.T) {
	t.Parallel()
	ctx, store := testContext(t), newStore(t)
	user := testsvc.NewID()

	b, err := store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, credits.Balance{UserID: user, Type: enrichment}, b)
}

func TestStoreAddDeductHistory(t *testing.T) {
	t.Parallel()
	ctx, store := testContext(t), newStore(t)
	user := testsvc.NewID()

	b, err := store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 100, Reason: "signup"})
	require.NoError(t, err)
	require.Equal(t, int64(100), b.Amount)
	require.Equal(t, int64(1), b.Version)
	require.Equal(t, time.UTC, b.UpdatedAt.Location())

	b, err = store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 30, Reason: "lookup"})
	require.NoError(t, err)
	require.Equal(t, int64(70), b.Amount)
	require.Equal(t, int64(2), b.Version)

	got, err := store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, b, got, "Balance returns exactly what the last change returned")

	_, err = store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 71})
	require.ErrorIs(t, err, credits.ErrInsufficient)
	_, err = store.Deduct(ctx, credits.Change{UserID: user, Type: "other", Amount: 1})
	require.ErrorIs(t, err, credits.ErrInsufficient, "no row is a zero balance")

	other, err := store.Balance(ctx, user, "other")
	require.NoError(t, err)
	require.Zero(t, other.Version)

	hist, err := store.History(ctx, user, enrichment, 0)
	require.NoError(t, err)
	require.Len(t, hist, 2)
	require.Equal(t, int64(-30), hist[0].Delta, "newest first")
	require.Equal(t, int64(70), hist[0].BalanceAfter)
	require.Equal(t, int64(2), hist[0].VersionAfter)
	require.Equal(t, "lookup", hist[0].Reason)
	require.Equal(t, int64(100), hist[1].Delta)
	require.Equal(t, "signup", hist[1].Reason)
	require.Greater(t, hist[0].ID, hist[1].ID)

	hist, err = store.History(ctx, user, enrichment, 1)
	require.NoError(t, err)
	require.Len(t, hist, 1)
}

func TestStoreHistoryLimitIsClamped(t *testing.T) {
	t.Parallel()
	ctx, store := testContext(t), newStore(t)
	user := testsvc.NewID()
	_, err := testsvc.Pool(t).Exec(ctx, `
		INSERT INTO credit_ledger (user_id, credit_type, delta, balance_after, version_after)
		SELECT $1, 'enrichment', 1, g, g FROM generate_series(1, 1005) AS g`, user)
	require.NoError(t, err)

	for _, tc := range []struct{ limit, want int }{{0, 100}, {-3, 100}, {7, 7}, {1000, 1000}, {5000, 1000}} {
		hist, err := store.History(ctx, user, enrichment, tc.limit)
		require.NoError(t, err)
		require.Len(t, hist, tc.want, "limit %d", tc.limit)
		require.Equal(t, int64(1005), hist[0].BalanceAfter, "newest first")
	}
}

// TestStoreConcurrentDeducts is the money rule: 200 racing deducts of 7 from
// 1000 succeed exactly 142 times and never lose an update.
func TestStoreConcurrentDeducts(t *testing.T) {
	t.Parallel()
	ctx, store := testContext(t), newStore(t)
	user := testsvc.NewID()
	_, err := store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 1000})
	require.NoError(t, err)

	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			b, err := store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 7})
			if err == nil && b.Amount < 0 {
				err = fmt.Errorf("negative balance %d", b.Amount)
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	var ok, insufficient int
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, credits.ErrInsufficient):
			insufficient++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	require.Equal(t, 142, ok)
	require.Equal(t, 58, insufficient)

	b, err := store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, int64(6), b.Amount)
	require.Equal(t, int64(1+142), b.Version)
	requireLedgerMatches(ctx, t, store, user, enrichment, b)
}

// requireLedgerMatches checks balance == Σ ledger deltas and that the ledger's
// versions are 1..n without gaps.
func requireLedgerMatches(ctx context.Context, t *testing.T, store *credits.Store, user int64, typ credits.Type, b credits.Balance) {
	t.Helper()
	hist, err := store.History(ctx, user, typ, credits.MaxHistoryLimit)
	require.NoError(t, err)
	require.Len(t, hist, int(b.Version))
	var sum int64
	for i, e := range hist {
		sum += e.Delta
		require.Equal(t, b.Version-int64(i), e.VersionAfter)
		require.GreaterOrEqual(t, e.BalanceAfter, int64(0))
	}
	require.Equal(t, b.Amount, sum, "balance equals the sum of the ledger")
	require.Equal(t, b.Amount, hist[0].BalanceAfter)
}

func TestStoreMixedConcurrentChanges(t *testing.T) {
	t.Parallel()
	ctx, store := testContext(t), newStore(t)
	user := testsvc.NewID()

	const workers, perWorker = 16, 25
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for range perWorker {
				c := credits.Change{UserID: user, Type: enrichment, Amount: 1 + r.Int64N(20)}
				var b credits.Balance
				var err error
				if r.IntN(2) == 0 {
					b, err = store.Add(ctx, c)
				} else {
					b, err = store.Deduct(ctx, c)
				}
				if err != nil && !errors.Is(err, credits.ErrInsufficient) {
					t.Errorf("change: %v", err)
					return
				}
				if b.Amount < 0 {
					t.Errorf("negative balance %d", b.Amount)
				}
			}
		})
	}
	wg.Wait()
	b, err := store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	requireLedgerMatches(ctx, t, store, user, enrichment, b)
}

func TestStoreIdempotentRetriesApplyOnce(t *testing.T) {
	t.Parallel()
	ctx, store := testContext(t), newStore(t)
	user := testsvc.NewID()
	_, err := store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 50})
	require.NoError(t, err)

	for _, op := range []struct {
		name  string
		apply func(context.Context, credits.Change) (credits.Balance, error)
	}{{"add", store.Add}, {"deduct", store.Deduct}} {
		c := credits.Change{UserID: user, Type: enrichment, Amount: 40, IdempotencyKey: "retry-" + op.name}
		const n = 30
		results := make([]credits.Balance, n)
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				results[i], errs[i] = op.apply(ctx, c)
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			require.NoError(t, errs[i], "%s retry %d", op.name, i)
			require.Equal(t, results[0], results[i], "%s: every retry returns the first result", op.name)
		}
	}
	b, err := store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, int64(50), b.Amount, "+40 and -40 applied once each")
	require.Equal(t, int64(3), b.Version)
	requireLedgerMatches(ctx, t, store, user, enrichment, b)

	// A replay is answered from the ledger even when the balance could no
	// longer pay for it.
	drain, err := store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 50})
	require.NoError(t, err)
	require.Zero(t, drain.Amount)
	again, err := store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 40, IdempotencyKey: "retry-deduct"})
	require.NoError(t, err)
	require.Equal(t, int64(50), again.Amount, "the first result, not ErrInsufficient")
	require.Equal(t, int64(3), again.Version)

	// Same key, other amount or direction: a conflict, and nothing applied.
	_, err = store.Deduct(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 41, IdempotencyKey: "retry-deduct"})
	require.ErrorIs(t, err, credits.ErrIdempotencyConflict)
	_, err = store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 40, IdempotencyKey: "retry-deduct"})
	require.ErrorIs(t, err, credits.ErrIdempotencyConflict)
	// The key is scoped to (user, type): another type may reuse it.
	_, err = store.Add(ctx, credits.Change{UserID: user, Type: "sms", Amount: 40, IdempotencyKey: "retry-deduct"})
	require.NoError(t, err)

	b, err = store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, drain, b)
}

// TestStoreBadInput: every bad input is ErrInvalid and writes nothing. It is
// not parallel, so the database-wide fingerprint cannot move under it.
func TestStoreBadInput(t *testing.T) {
	ctx, store := testContext(t), newStore(t)
	pool := testsvc.Pool(t)
	near := testsvc.NewID()
	_, err := store.Add(ctx, credits.Change{UserID: near, Type: enrichment, Amount: 1})
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE credit_balances SET balance = $2 WHERE user_id = $1`, near, int64(math.MaxInt64-10))
	require.NoError(t, err)

	user := testsvc.NewID()
	ok := credits.Change{UserID: user, Type: enrichment, Amount: 5, Reason: "r", IdempotencyKey: "k"}
	with := func(f func(*credits.Change)) credits.Change { c := ok; f(&c); return c }
	cases := []struct {
		name string
		call func() error
	}{
		{"zero user", func() error { _, err := store.Add(ctx, with(func(c *credits.Change) { c.UserID = 0 })); return err }},
		{"negative user", func() error { _, err := store.Deduct(ctx, with(func(c *credits.Change) { c.UserID = -7 })); return err }},
		{"empty type", func() error { _, err := store.Add(ctx, with(func(c *credits.Change) { c.Type = "" })); return err }},
		{"upper-case type", func() error {
			_, err := store.Add(ctx, with(func(c *credits.Change) { c.Type = "Enrichment" }))
			return err
		}},
		{"type starting with digit", func() error { _, err := store.Add(ctx, with(func(c *credits.Change) { c.Type = "1sms" })); return err }},
		{"type with dash", func() error { _, err := store.Add(ctx, with(func(c *credits.Change) { c.Type = "a-b" })); return err }},
		{"type with glob", func() error { _, err := store.Add(ctx, with(func(c *credits.Change) { c.Type = "a*" })); return err }},
		{"type 33 chars", func() error {
			_, err := store.Add(ctx, with(func(c *credits.Change) { c.Type = credits.Type("a" + strings.Repeat("b", 32)) }))
			return err
		}},
		{"zero amount", func() error { _, err := store.Add(ctx, with(func(c *credits.Change) { c.Amount = 0 })); return err }},
		{"negative amount", func() error { _, err := store.Deduct(ctx, with(func(c *credits.Change) { c.Amount = -5 })); return err }},
		{"amount over max", func() error {
			_, err := store.Add(ctx, with(func(c *credits.Change) { c.Amount = credits.MaxAmount + 1 }))
			return err
		}},
		{"long reason", func() error {
			_, err := store.Add(ctx, with(func(c *credits.Change) { c.Reason = strings.Repeat("x", credits.MaxReasonBytes+1) }))
			return err
		}},
		{"reason not utf-8", func() error {
			_, err := store.Add(ctx, with(func(c *credits.Change) { c.Reason = "\xff\xfe" }))
			return err
		}},
		{"reason with NUL", func() error {
			_, err := store.Add(ctx, with(func(c *credits.Change) { c.Reason = "a\x00b" }))
			return err
		}},
		{"long idempotency key", func() error {
			_, err := store.Add(ctx, with(func(c *credits.Change) { c.IdempotencyKey = strings.Repeat("k", credits.MaxIdempotencyKeyLen+1) }))
			return err
		}},
		{"overflow", func() error {
			_, err := store.Add(ctx, credits.Change{UserID: near, Type: enrichment, Amount: 11})
			return err
		}},
		{"balance of zero user", func() error { _, err := store.Balance(ctx, 0, enrichment); return err }},
		{"balance of bad type", func() error { _, err := store.Balance(ctx, user, "BAD"); return err }},
		{"history of negative user", func() error { _, err := store.History(ctx, -1, enrichment, 10); return err }},
		{"history of bad type", func() error { _, err := store.History(ctx, user, "with space", 10); return err }},
	}
	before := fingerprint(ctx, t, pool)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			require.ErrorIs(t, err, credits.ErrInvalid)
			require.NotErrorIs(t, err, credits.ErrInsufficient)
		})
	}
	require.Equal(t, before, fingerprint(ctx, t, pool), "bad input wrote nothing")
	b, err := store.Balance(ctx, near, enrichment)
	require.NoError(t, err)
	require.Equal(t, int64(math.MaxInt64-10), b.Amount)
}

func fingerprint(ctx context.Context, t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var fp string
	err := pool.QueryRow(ctx, `SELECT concat_ws('/',
		(SELECT count(*) FROM credit_balances), (SELECT coalesce(sum(balance::numeric), 0) FROM credit_balances),
		(SELECT coalesce(sum(version), 0) FROM credit_balances),
		(SELECT count(*) FROM credit_ledger), (SELECT count(*) FROM cache_outbox))`).Scan(&fp)
	require.NoError(t, err)
	return fp
}

// TestStoreReadSurvivesTerminatedConnection: after the server terminates
// every connection (as a restart does, 57P01), the next read retries once on
// a new connection instead of failing.
func TestStoreReadSurvivesTerminatedConnection(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool := testsvc.NewPool(t, func(c *pgxpool.Config) {
		c.MaxConns = 1
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	store := credits.NewStore(pool)
	user := testsvc.NewID()
	_, err := store.Add(ctx, credits.Change{UserID: user, Type: enrichment, Amount: 3})
	require.NoError(t, err)

	var pid uint32
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	_, err = testsvc.Pool(t).Exec(ctx, `SELECT pg_terminate_backend($1)`, pid)
	require.NoError(t, err)

	b, err := store.Balance(ctx, user, enrichment)
	require.NoError(t, err)
	require.Equal(t, int64(3), b.Amount)
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid), "pool works afterwards")
}
