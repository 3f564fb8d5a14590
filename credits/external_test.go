package credits_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// externalConn is a plain pgx connection to the test's database: a writer
// that is not the library (psql, a billing job, a migration).
func externalConn(ctx context.Context, t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// untilBalance reads through inst until it returns want (never a balance
// past it, unless want is 0: a deleted row) and returns how long after
// since that took.
func untilBalance(ctx context.Context, t *testing.T, inst *instance, user int64, want int64, since time.Time) time.Duration {
	t.Helper()
	for {
		b, err := inst.repo.Balance(ctx, user, enrichment)
		require.NoError(t, err)
		if b.Amount == want {
			return time.Since(since)
		}
		if want != 0 {
			require.Less(t, b.Amount, want, "a balance no write made")
		}
		require.NoError(t, ctx.Err(), "balance %d never reached %d", b.Amount, want)
	}
}

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// TestExternalWritesReachEveryInstance: SQL run by a plain connection, not
// the library — INSERT, 200 UPDATEs, DELETE, TRUNCATE — is invalidated in
// both instances, whose next reads return the new state: the balance
// triggers record the rows in the writer's transaction and notify, and each
// instance's LISTENing sweeper deletes the keys at once. It reports the
// time from the external COMMIT to the first fresh read in each instance.
// Then it kills the instances' LISTEN connections (pg_terminate_backend):
// they are redialled, each redial followed by a sweep, and changes made
// meanwhile are still invalidated.
func TestExternalWritesReachEveryInstance(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL := testsvc.IsolatedDatabaseURL(t)
	prefix := testsvc.Prefix(t)
	insts := []*instance{
		newInstanceOn(t, dbURL, prefix, "", &credits.CachedConfig{}),
		newInstanceOn(t, dbURL, prefix, "", &credits.CachedConfig{}),
	}
	sql := externalConn(ctx, t, dbURL)
	user, other := testsvc.NewID(), testsvc.NewID()
	for _, in := range insts {
		require.Zero(t, mustBalance(ctx, t, in.repo, user).Amount, "no row yet: cached as a zero balance")
	}

	_, err := sql.Exec(ctx, `INSERT INTO credit_balances VALUES ($1, $2, 100, 1, now()), ($3, $2, 7, 1, now())`, user, enrichment, other)
	require.NoError(t, err)
	committed := time.Now()
	var lat []time.Duration
	for _, in := range insts {
		lat = append(lat, untilBalance(ctx, t, in, user, 100, committed))
		require.Equal(t, int64(7), mustBalance(ctx, t, in.repo, other).Amount)
	}

	const updates = 200
	for i := range updates {
		for _, in := range insts { // both hold the current balance
			require.Equal(t, int64(100+i), mustBalance(ctx, t, in.repo, user).Amount)
		}
		_, err := sql.Exec(ctx, `UPDATE credit_balances SET balance = balance + 1, version = version + 1, updated_at = now()
			WHERE user_id = $1 AND credit_type = $2`, user, enrichment)
		require.NoError(t, err)
		committed := time.Now()
		for _, in := range insts {
			lat = append(lat, untilBalance(ctx, t, in, user, int64(100+i+1), committed))
		}
	}
	t.Logf("external COMMIT → first fresh read, %d reads over 2 instances: p50 %v, p99 %v, max %v",
		len(lat), quantile(lat, 0.5), quantile(lat, 0.99), slices.Max(lat))

	_, err = sql.Exec(ctx, `DELETE FROM credit_balances WHERE user_id = $1`, user)
	require.NoError(t, err)
	committed = time.Now()
	for _, in := range insts {
		untilBalance(ctx, t, in, user, 0, committed)
	}
	_, err = sql.Exec(ctx, `TRUNCATE credit_balances`)
	require.NoError(t, err)
	committed = time.Now()
	for _, in := range insts {
		untilBalance(ctx, t, in, other, 0, committed) // a domain-wide invalidation
	}
	for _, in := range insts {
		st, err := in.repo.OutboxStats(ctx)
		require.NoError(t, err)
		require.True(t, st.Listening)
		require.Positive(t, st.Notifications)
	}

	// The LISTEN connections killed: each write right after a kill is
	// still invalidated (a redial sweeps; the poll is the backstop).
	_, err = sql.Exec(ctx, `INSERT INTO credit_balances VALUES ($1, $2, 100, 1, now())`, user, enrichment)
	require.NoError(t, err)
	untilBalance(ctx, t, insts[0], user, 100, time.Now())
	balance := int64(100)
	drops := int64(0)
	killListeners := func() {
		t.Helper()
		var n int
		require.NoError(t, sql.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n))
		require.Equal(t, len(insts), n, "one LISTEN connection per instance (and domain)")
		drops++
	}
	listening := func(want bool) {
		t.Helper()
		for _, in := range insts {
			require.Eventually(t, func() bool {
				st, err := in.repo.OutboxStats(ctx)
				return err == nil && st.Listening == want && st.ListenDrops >= drops // a failed redial counts too
			}, 10*time.Second, time.Millisecond)
		}
	}
	update := func() []time.Duration {
		t.Helper()
		_, err := sql.Exec(ctx, `UPDATE credit_balances SET balance = balance + 1, version = version + 1 WHERE user_id = $1`, user)
		require.NoError(t, err)
		committed := time.Now()
		balance++
		var ds []time.Duration
		for _, in := range insts {
			ds = append(ds, untilBalance(ctx, t, in, user, balance, committed))
		}
		return ds
	}
	for range 5 {
		killListeners()
		update()
		listening(true)
	}
	// With no redial possible (the database refuses new connections), the
	// sweepers' poll (every SweepIdle, 2 s) is all that is left.
	allow := func(ctx context.Context, on bool) error { // from another database: not the current one
		_, err := testsvc.Pool(t).Exec(ctx, fmt.Sprintf(`ALTER DATABASE %s WITH ALLOW_CONNECTIONS %t`, pgx.Identifier{sql.Config().Database}.Sanitize(), on))
		return err
	}
	require.NoError(t, allow(ctx, false))
	t.Cleanup(func() { _ = allow(context.Background(), true) })
	killListeners()
	listening(false)
	var polled []time.Duration
	for range 3 {
		polled = append(polled, update()...)
	}
	require.NoError(t, allow(ctx, true))
	listening(true)
	t.Logf("LISTEN connections down: COMMIT → first fresh read (the poll) p50 %v, max %v", quantile(polled, 0.5), slices.Max(polled))
}

// TestExternalRollbackInvalidatesNothing: a rolled-back external change
// writes no outbox row (the triggers' rows roll back with it) and sends no
// notification, so the cached balance keeps being served from Redis.
func TestExternalRollbackInvalidatesNothing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL := testsvc.IsolatedDatabaseURL(t)
	a := newInstanceOn(t, dbURL, testsvc.Prefix(t), "", &credits.CachedConfig{})
	sql := externalConn(ctx, t, dbURL)
	user := testsvc.NewID()
	_, err := sql.Exec(ctx, `INSERT INTO credit_balances VALUES ($1, $2, 100, 1, now())`, user, enrichment)
	require.NoError(t, err)
	require.Eventually(t, func() bool { // the INSERT's own invalidation has landed
		st, err := a.repo.OutboxStats(ctx)
		return err == nil && st.Depth == 0
	}, 10*time.Second, time.Millisecond)
	require.Equal(t, int64(100), mustBalance(ctx, t, a.repo, user).Amount) // cached

	var last int64
	require.NoError(t, sql.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM cache_outbox`).Scan(&last))
	tx, err := sql.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE credit_balances SET balance = 0 WHERE user_id = $1`, user)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `DELETE FROM credit_balances WHERE user_id = $1`, user)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))

	var rows int
	require.NoError(t, sql.QueryRow(ctx, `SELECT count(*) FROM cache_outbox WHERE id > $1`, last).Scan(&rows))
	require.Zero(t, rows, "the triggers' rows rolled back with the change")
	st, err := a.repo.OutboxStats(ctx)
	require.NoError(t, err)
	notified := st.Notifications
	loads := a.tracer.Count()
	// A notification, had one been sent, would have arrived before this
	// one: Postgres delivers a session's notifications in commit order.
	_, err = sql.Exec(ctx, `SELECT pg_notify('ghlcache_credits', '')`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err := a.repo.OutboxStats(ctx)
		return err == nil && st.Notifications > notified
	}, 10*time.Second, time.Millisecond)
	st, err = a.repo.OutboxStats(ctx)
	require.NoError(t, err)
	require.Equal(t, notified+1, st.Notifications, "the rolled-back change notified nobody")
	require.Equal(t, int64(100), mustBalance(ctx, t, a.repo, user).Amount)
	require.Equal(t, loads, a.tracer.Count(), "still a hit: nothing was invalidated")
}

// TestTriggerKeysMatchGo: the keys the triggers build in SQL equal
// credits.Key in Go on the same rows, for type names the library would
// refuse too (any SQL may write them).
func TestTriggerKeysMatchGo(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL := testsvc.IsolatedDatabaseURL(t)
	a := newInstanceOn(t, dbURL, testsvc.Prefix(t), "", &credits.CachedConfig{SweepInterval: time.Hour, SweepIdle: time.Hour})
	require.NoError(t, a.repo.Close()) // no sweeper: the rows stay to be read
	sql := externalConn(ctx, t, dbURL)
	// Close shortened the namespace's life to the TTL + 1 min: still live.
	types := []string{"enrichment", "Weird Type:ü", "with'quote", "a%b_c*d", "emoji 🙂", "x:y:z"}
	want := map[string]bool{}
	for i, typ := range types {
		user := int64(1_000_000 + i)
		_, err := sql.Exec(ctx, `INSERT INTO credit_balances VALUES ($1, $2, 1, 1, now())`, user, typ)
		require.NoError(t, err)
		want[a.cache.FullKey(credits.Key(user, credits.Type(typ)))] = true
	}
	rows, err := sql.Query(ctx, `SELECT cache_key FROM cache_outbox WHERE external AND NOT whole_prefix`)
	require.NoError(t, err)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	got := map[string]bool{}
	for _, k := range keys {
		got[k] = true
	}
	require.Equal(t, want, got, fmt.Sprintf("SQL keys %q", keys))
}

// unlinkLog records, per key, when each UNLINK of it was sent and when its
// reply came back (a go-redis hook on an instance's client).
type unlinkLog struct {
	mu    sync.Mutex
	spans map[string][][2]time.Time
}

func (l *unlinkLog) DialHook(next redis.DialHook) redis.DialHook { return next }
func (l *unlinkLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return l.ProcessPipelineHook(func(ctx context.Context, cmds []redis.Cmder) error { return next(ctx, cmds[0]) })(ctx, []redis.Cmder{cmd})
	}
}
func (l *unlinkLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		sent := time.Now()
		err := next(ctx, cmds)
		done := time.Now()
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range cmds {
			if c.Name() != "unlink" || c.Err() != nil {
				continue
			}
			for _, a := range c.Args()[1:] {
				k := fmt.Sprint(a)
				if s, ok := a.(*string); ok {
					k = *s
				}
				l.spans[k] = append(l.spans[k], [2]time.Time{sent, done})
			}
		}
		return err
	}
}

// TestExternalWritersRaceCachedReaders: for 5 s, two plain connections
// update balances in SQL while two instances' repositories add to the same
// balances and eight readers read them through either instance. Checked
// afterwards: no read that began after an UNLINK of its key returned (sent
// after a change of it had committed) returned a balance older than that
// change; and after quiescence and one sweep every key in every instance
// equals Postgres.
func TestExternalWritersRaceCachedReaders(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL := testsvc.IsolatedDatabaseURL(t)
	prefix := testsvc.Prefix(t)
	opts, err := redis.ParseURL(testsvc.RedisURL(t))
	require.NoError(t, err)
	type inst struct {
		repo  *credits.Cached
		cache *cachelayer.Cache
		log   *unlinkLog
	}
	var insts []inst
	for range 2 {
		pool := testsvc.NewPoolOn(t, dbURL, nil)
		rdb := redis.NewClient(opts)
		log := &unlinkLog{spans: map[string][][2]time.Time{}}
		rdb.AddHook(log)
		t.Cleanup(func() { _ = rdb.Close() })
		cache := cachelayer.New(rdb, &cachelayer.Config{Prefix: prefix, OpTimeout: 2 * time.Second})
		t.Cleanup(func() { _ = cache.Close() })
		repo := credits.NewCached(credits.NewStore(pool), cache, nil)
		t.Cleanup(func() { _ = repo.Close() })
		insts = append(insts, inst{repo, cache, log})
	}
	const users = 20
	base := testsvc.NewID() * 100
	store := credits.NewStore(testsvc.NewPoolOn(t, dbURL, nil))
	for u := range users {
		_, err := store.Add(ctx, credits.Change{UserID: base + int64(u), Type: enrichment, Amount: 1000})
		require.NoError(t, err)
	}

	type write struct {
		version   int64
		committed time.Time // the commit had returned
	}
	type read struct {
		began   time.Time
		version int64
	}
	var mu sync.Mutex
	writes := map[int64][]write{}
	reads := map[int64][]read{}
	wctx, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var externals, libraries, nreads atomic.Int64
	for w := range 2 {
		sql := externalConn(ctx, t, dbURL)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for wctx.Err() == nil {
				u := base + rng.Int64N(users)
				var v int64
				if err := sql.QueryRow(wctx, `UPDATE credit_balances SET balance = balance + 1, version = version + 1, updated_at = now()
					WHERE user_id = $1 AND credit_type = $2 RETURNING version`, u, enrichment).Scan(&v); err != nil {
					require.ErrorIs(t, wctx.Err(), context.DeadlineExceeded, "external write: %v", err)
					return
				}
				at := time.Now()
				mu.Lock()
				writes[u] = append(writes[u], write{v, at})
				mu.Unlock()
				externals.Add(1)
			}
		})
	}
	for w := range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for wctx.Err() == nil {
				u := base + rng.Int64N(users)
				b, err := insts[w].repo.Add(context.WithoutCancel(wctx), credits.Change{UserID: u, Type: enrichment, Amount: 1})
				if err != nil {
					t.Errorf("library write: %v", err)
					return
				}
				at := time.Now()
				mu.Lock()
				writes[u] = append(writes[u], write{b.Version, at})
				mu.Unlock()
				libraries.Add(1)
			}
		})
	}
	for r := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 3))
			for wctx.Err() == nil {
				u := base + rng.Int64N(users)
				began := time.Now()
				b, err := insts[r%2].repo.Balance(context.WithoutCancel(wctx), u, enrichment)
				if err != nil {
					t.Errorf("read: %v", err)
					return
				}
				mu.Lock()
				reads[u] = append(reads[u], read{began, b.Version})
				mu.Unlock()
				nreads.Add(1)
			}
		})
	}
	wg.Wait()

	// The freshness check, per key: an UNLINK sent after a write had
	// committed covers that write; a read that began after a covering
	// UNLINK's reply must return that version or a newer one.
	stale := 0
	for u, rs := range reads {
		key := insts[0].cache.FullKey(credits.Key(u, enrichment))
		type cover struct {
			done    time.Time
			version int64
		}
		var covers []cover
		for _, in := range insts {
			in.log.mu.Lock()
			for _, s := range in.log.spans[key] {
				var v int64
				for _, w := range writes[u] {
					if w.committed.Before(s[0]) {
						v = max(v, w.version)
					}
				}
				covers = append(covers, cover{s[1], v})
			}
			in.log.mu.Unlock()
		}
		for _, r := range rs {
			var need int64
			for _, c := range covers {
				if c.done.Before(r.began) {
					need = max(need, c.version)
				}
			}
			if r.version < need {
				stale++
				if stale <= 5 {
					t.Errorf("user %d: a read that began after the delete of version %d returned version %d", u, need, r.version)
				}
			}
		}
	}
	t.Logf("5 s: %d external writes, %d library writes, %d reads; %d stale", externals.Load(), libraries.Load(), nreads.Load(), stale)
	require.Positive(t, externals.Load())
	require.Positive(t, libraries.Load())

	// Quiescence and one sweep: every key in every instance equals Postgres.
	for _, in := range insts {
		require.NoError(t, in.repo.Sweep(ctx))
	}
	for u := range users {
		want, err := store.Balance(ctx, base+int64(u), enrichment)
		require.NoError(t, err)
		for _, in := range insts {
			require.Equal(t, want, mustBalance(ctx, t, in.repo, base+int64(u)), "user %d", base+int64(u))
		}
	}
}

// TestBulkUpdateIsOneInvalidation: one UPDATE of 100 000 balances (past
// ghlcache.bulk_threshold) records one whole-prefix row for the live
// namespace, not 100 000, and sends one notification; the sweep deletes
// every key under "credits:" and the cached balances read fresh. It
// reports the UPDATE's time with and without the triggers.
func TestBulkUpdateIsOneInvalidation(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL := testsvc.IsolatedDatabaseURL(t)
	sql := externalConn(ctx, t, dbURL)
	const n = 100_000
	base := testsvc.NewID() * 1_000_000
	_, err := sql.Exec(ctx, `INSERT INTO credit_balances SELECT g, 'enrichment', 1, 1, now() FROM generate_series($1::bigint, $1::bigint + $2 - 1) g`, base, n)
	require.NoError(t, err)
	bulk := func() time.Duration {
		t.Helper()
		began := time.Now()
		tag, err := sql.Exec(ctx, `UPDATE credit_balances SET balance = balance + 1, version = version + 1`)
		require.NoError(t, err)
		require.EqualValues(t, n, tag.RowsAffected())
		return time.Since(began)
	}
	_, err = sql.Exec(ctx, `ALTER TABLE credit_balances DISABLE TRIGGER credit_balances_outbox_update`)
	require.NoError(t, err)
	without := bulk()
	_, err = sql.Exec(ctx, `ALTER TABLE credit_balances ENABLE TRIGGER credit_balances_outbox_update`)
	require.NoError(t, err)
	noNamespace := bulk() // triggers on, nobody caching: nothing recorded

	a := newInstanceOn(t, dbURL, testsvc.Prefix(t), "", &credits.CachedConfig{})
	for u := range 10 {
		require.Equal(t, int64(3), mustBalance(ctx, t, a.repo, base+int64(u)).Amount)
	}
	st, err := a.repo.OutboxStats(ctx)
	require.NoError(t, err)
	var last int64
	require.NoError(t, sql.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM cache_outbox`).Scan(&last))
	with := bulk()
	type row struct {
		Key   string
		Whole bool
	}
	rows, err := sql.Query(ctx, `SELECT cache_key, whole_prefix FROM cache_outbox WHERE id > $1`, last)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	require.NoError(t, err)
	require.Equal(t, []row{{a.cache.FullKey("credits:"), true}}, got, "one whole-prefix row")
	for u := range 10 {
		untilBalance(ctx, t, a, base+int64(u), 4, time.Now())
	}
	after, err := a.repo.OutboxStats(ctx)
	require.NoError(t, err)
	require.Equal(t, st.Notifications+1, after.Notifications, "one notification for the statement")
	t.Logf("UPDATE of %d balances: %v without the triggers, %v with them and no cache live, %v with a live namespace (one whole-prefix row)",
		n, without.Round(time.Millisecond), noNamespace.Round(time.Millisecond), with.Round(time.Millisecond))
}
