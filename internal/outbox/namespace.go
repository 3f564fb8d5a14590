package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ghl-agency/ghlcache/internal/dbq"
)

// This file keeps the process's namespace (domain, cache prefix) live in
// cache_namespaces, where the tables' triggers read which prefixes to write
// rows for when a change is made outside the library
// (db/migrations/00006_external_writes.sql).
//
// A namespace is live until live_until, which each instance moves to
// MaxAge + namespaceMargin from now at New and every refreshInterval; Close
// shortens it to MaxAge (the expiry of anything it filled), and another
// live instance of the namespace lengthens it again at its next refresh.
// So any entry in Redis under the prefix expires before the namespace stops
// being live. After unrefreshedLimit (2.5 min) without a successful
// refresh the process stops reading through Redis (SkipRedis), so nothing
// it fills can outlive the namespace; five minutes lapse it, and the next
// refresh registers it afresh and settles it again.
//
// A registration is not trusted at once: a transaction that had written
// the domain's tables (Config.Tables) before it committed may have run its
// trigger without this namespace and commit after this process loaded the
// old value. So after every registration at New, and after a refresh that
// finds the namespace lapsed, the process notes the transactions holding a
// write lock on those tables and reads every key from Postgres (SkipRedis)
// until they have all ended (settled). A transaction that writes them
// later runs its trigger after the registration committed and, at READ
// COMMITTED, sees it. (A REPEATABLE READ or SERIALIZABLE transaction whose
// snapshot predates the registration and that writes afterwards does not:
// the one case this leaves open, for a namespace younger than that
// transaction.)

// namespaceMargin is how much longer than MaxAge a namespace stays live
// after its last refresh.
const namespaceMargin = 5 * time.Minute

// refreshInterval is how often the sweeper refreshes its namespace.
func (o *Outbox) refreshInterval() time.Duration { return min(30*time.Second, o.cfg.MaxAge/2) }

// liveSeconds is how long a registration or refresh keeps the namespace
// live.
func (o *Outbox) liveSeconds() float64 { return (o.cfg.MaxAge + namespaceMargin).Seconds() }

// refreshDue reports whether the next sweep should refresh the namespace
// (its tidy statement does it: no statement of its own). The caller holds
// sweepMu.
func (o *Outbox) refreshDue() bool {
	return o.register && !o.refreshed.IsZero() && o.cfg.Now().Sub(o.refreshed) >= o.refreshInterval()
}

// registerLocked registers (or refreshes) the namespace in a statement of
// its own, and settles it again when it was not registered before by this
// process or had lapsed. The caller holds sweepMu.
func (o *Outbox) registerLocked(ctx context.Context) error {
	r, err := dbq.New(o.pool).CacheNamespaceRegister(ctx, dbq.CacheNamespaceRegisterParams{
		Domain: o.cfg.Domain, Prefix: o.prefix, LiveSeconds: o.liveSeconds(),
	})
	if err != nil {
		return fmt.Errorf("outbox: register namespace: %w", err)
	}
	return o.refreshedLocked(ctx, r.WasLive)
}

// refreshedLocked follows a successful registration or refresh; wasLive
// tells whether the namespace was live before it. The first registration
// of this process, or one that found it lapsed, notes the transactions
// that must end before it is settled. The caller holds sweepMu.
func (o *Outbox) refreshedLocked(ctx context.Context, wasLive bool) error {
	first := o.refreshed.IsZero()
	o.refreshed = o.cfg.Now()
	if !first && wasLive {
		if len(o.waitFor) == 0 && !o.settled.Load() {
			o.log.Info("cache namespace refreshed again; reading through Redis")
			o.settled.Store(true) // after unrefreshedLimit without a refresh: it never lapsed
		}
		return o.settleLocked(ctx) // no-op once settled
	}
	if !first && o.settled.Load() {
		o.log.Warn("cache namespace had lapsed; reading from Postgres until the writes in progress have ended")
	}
	o.settled.Store(false)
	if len(o.cfg.Tables) == 0 {
		o.waitFor = nil
		o.settled.Store(true)
		return nil
	}
	rows, err := o.pool.Query(ctx, tableWritersSQL, o.cfg.Tables)
	if err != nil {
		return fmt.Errorf("outbox: register namespace: writers in progress: %w", err)
	}
	vxids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("outbox: register namespace: writers in progress: %w", err)
	}
	o.waitFor = vxids
	if len(vxids) == 0 {
		o.settled.Store(true)
		return nil
	}
	return o.settleLocked(ctx)
}

// tableWritersSQL lists the transactions (other than this one) that hold or
// wait for a write lock on any of the tables $1 in this database. (pg_locks
// is readable by every role; sqlc does not know the view.)
const tableWritersSQL = `
SELECT DISTINCT l.virtualtransaction::text
FROM pg_catalog.pg_locks l
WHERE l.locktype = 'relation'
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
  AND l.relation = ANY($1::text[]::regclass[])
  AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
  AND l.pid <> pg_backend_pid()`

// transactionsEndedSQL reports whether none of the transactions $1 has a
// lock left, that is, every one of them has ended.
const transactionsEndedSQL = `
SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l WHERE l.virtualtransaction = ANY($1::text[]))`

// settleLocked checks whether the noted transactions have ended. The
// caller holds sweepMu.
func (o *Outbox) settleLocked(ctx context.Context) error {
	if len(o.waitFor) == 0 {
		return nil
	}
	var ended bool
	if err := o.pool.QueryRow(ctx, transactionsEndedSQL, o.waitFor).Scan(&ended); err != nil {
		return fmt.Errorf("outbox: namespace settle check: %w", err)
	}
	if ended {
		o.waitFor = nil
		o.settled.Store(true)
	}
	return nil
}

// maintainNamespaceLocked is the sweeper's part: the registration until it
// succeeded, the settle check until it holds, and a refresh in a statement
// of its own only when no sweep did it for twice refreshInterval (sweeps
// rarer than that). The caller holds sweepMu.
func (o *Outbox) maintainNamespaceLocked(ctx context.Context) error {
	if !o.register {
		return nil
	}
	since := o.cfg.Now().Sub(o.refreshed)
	if !o.refreshed.IsZero() && since >= unrefreshedLimit && o.settled.Load() {
		// Refreshes have failed for a while: stop filling Redis before
		// the namespace can lapse, so no entry outlives it.
		o.log.Warn("cache namespace not refreshed for a while; reading from Postgres until it is", "since", since.Round(time.Second))
		o.settled.Store(false)
	}
	if o.refreshed.IsZero() || since >= 2*o.refreshInterval() {
		return o.registerLocked(ctx)
	}
	return o.settleLocked(ctx)
}

// unrefreshedLimit is how long after its last successful refresh a
// namespace is still trusted: half namespaceMargin, so that anything filled
// while it is trusted expires before the namespace stops being live.
const unrefreshedLimit = namespaceMargin / 2

// registerAtNew registers the namespace before New returns, waiting up to
// settleWait for it to settle, so that a repository that can reach
// Postgres serves from Redis from its first read. Past that (Postgres
// unreachable, a long transaction in progress) the sweeper goes on.
func (o *Outbox) registerAtNew() {
	ctx, cancel := context.WithTimeout(context.Background(), settleWait)
	defer cancel()
	o.sweepMu.Lock()
	defer o.sweepMu.Unlock()
	if err := o.registerLocked(ctx); err != nil {
		o.log.Warn("cache namespace not registered yet; reading from Postgres until it is", "err", err)
		return
	}
	for wait := time.Millisecond; !o.settled.Load(); wait = min(2*wait, 50*time.Millisecond) {
		select {
		case <-ctx.Done():
			o.log.Info("writes in progress when the cache namespace registered have not ended; reading from Postgres until they have")
			return
		case <-time.After(wait):
		}
		if err := o.settleLocked(ctx); err != nil {
			return
		}
	}
}

// settleWait bounds how long New waits for its namespace to settle.
const settleWait = 2 * time.Second

// releaseNamespace shortens the namespace's life at Close.
func (o *Outbox) releaseNamespace() {
	o.sweepMu.Lock()
	defer o.sweepMu.Unlock()
	if !o.register || o.refreshed.IsZero() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := dbq.New(o.pool).CacheNamespaceRelease(ctx, dbq.CacheNamespaceReleaseParams{
		KeepSeconds: o.cfg.MaxAge.Seconds(), Domain: o.cfg.Domain, Prefix: o.prefix,
	}); err != nil {
		o.log.Debug("cache namespace not released (it lapses by itself)", "err", err)
	}
}
