// Package outbox makes cache invalidation durable: a change records the full
// cache key in the cache_outbox table in its own transaction
// ([Outbox.Record]); after commit the writer deletes the key and removes the
// row ([Outbox.Invalidate]); a sweeper in every cached
// repository deletes the keys of rows left behind (Redis was down, the delete
// timed out, the writer died) and removes a row only after its key's delete
// succeeded, however old the row is.
//
// Only while its deletes fail does a sweeper drop rows without a delete, and
// only moot ones: rows it first saw at least MaxAge (the domain's TTL + 1
// min) ago. A row is visible only once its transaction has committed, so
// that moment is after the change, and the cache entry the row names has
// expired by itself since. The row's created_at cannot tell: it is the start
// of the writing transaction, which may have committed much later.
//
// An instance whose cache cannot reach Redis at all (no-cache mode, a closed
// cache) still writes its rows, but counts none as delivered and claims
// none (it only drops moot rows): instances that share the database and
// have Redis delete their keys.
//
// The Outbox also remembers which keys this process's own invalidations are
// still pending for, so its reads of them can bypass the cache
// (read-your-writes during a Redis outage).
package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/internal/dbq"
)

// Invalidator deletes already-prefixed cache keys; *cachelayer.Cache is one.
// FullKey prefixes a domain's key as the cache stores it. DeleteFull must
// return nil only when every key's delete reached Redis.
// Enabled reports whether it can reach Redis at all: false for a cache in
// no-cache mode or closed. While it is false the outbox counts nothing as
// delivered and claims no rows (which would hold them from instances that
// can delete their keys); it still calls DeleteFull after a write, which
// must then make the key's in-process loads unjoinable (as
// cachelayer.Cache.DeleteFull does), so that a read that begins after the
// write does not share a load that began before it.
type Invalidator interface {
	FullKey(key string) string
	DeleteFull(ctx context.Context, fullKeys ...string) error
	Enabled() bool
}

// Config configures an Outbox. Zero fields take the defaults.
type Config struct {
	Domain   string        // cache_outbox.domain this outbox writes and sweeps; required
	Interval time.Duration // between sweeps, 1 s
	Batch    int           // rows claimed per transaction, 500
	MaxAge   time.Duration // how long a row stays after this process first saw it, while its key cannot be deleted; the domain TTL + 1 min
	Logger   *slog.Logger  // slog.Default()

	Now func() time.Time // the clock MaxAge is measured on, time.Now; tests set it
}

// Stats describes an outbox domain: the table's rows (all instances) and
// this process's counters.
type Stats struct {
	Depth     int64         // rows waiting in the table for this domain
	OldestAge time.Duration // age of the oldest waiting row, 0 when none
	Pending   int           // keys whose invalidation this process is still waiting for
	Swept     int64         // rows this process's sweeper removed after deleting their key
	Dropped   int64         // moot rows this process's sweeper dropped without a delete (its deletes failed)
	Failures  int64         // sweeps that could not reach Redis or Postgres
}

// Outbox writes, tracks and sweeps one domain's invalidations. It is safe
// for concurrent use. Close stops its sweeper.
type Outbox struct {
	pool *pgxpool.Pool
	inv  Invalidator
	cfg  Config
	log  *slog.Logger

	mu      sync.Mutex       // guards pending and byKey
	pending map[int64]string // outbox row id → key, for rows this process wrote and has not seen removed
	byKey   map[string]int   // key → number of pending rows for it
	npend   atomic.Int64     // len(pending), read without mu on the hot path

	swept, dropped, failures atomic.Int64

	sweepMu   sync.Mutex          // serialises Sweep; guards seen and seenAfter
	seen      map[int64]time.Time // row id → when a sweep that could not delete keys first saw it (after its commit); at most seenPerBatch × Batch rows
	seenAfter int64               // the row id after which the next look for old rows starts; 0: from the first

	removeMu   sync.Mutex    // guards removeIDs
	removeIDs  []int64       // rows whose key was deleted, to remove
	removeWake chan struct{} // capacity 1: the remover has work

	stop      chan struct{}
	wg        sync.WaitGroup // the sweeper and the remover
	closeOnce sync.Once
	failing   atomic.Bool // last sweep failed; logs once per state change
}

// New returns an Outbox for cfg.Domain and starts its sweeper goroutine.
func New(pool *pgxpool.Pool, inv Invalidator, cfg Config) *Outbox {
	if cfg.Domain == "" {
		panic("outbox: Config.Domain is required")
	}
	if cfg.Interval < 0 || cfg.Batch < 0 || cfg.MaxAge < 0 {
		panic("outbox: negative Config value")
	}
	cfg.Interval = cmp.Or(cfg.Interval, time.Second)
	cfg.Batch = cmp.Or(cfg.Batch, 500)
	cfg.MaxAge = cmp.Or(cfg.MaxAge, 6*time.Minute)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	o := &Outbox{
		pool: pool, inv: inv, cfg: cfg,
		log:        cmp.Or(cfg.Logger, slog.Default()).With("outbox", cfg.Domain),
		pending:    make(map[int64]string),
		byKey:      make(map[string]int),
		seen:       make(map[int64]time.Time),
		stop:       make(chan struct{}),
		removeWake: make(chan struct{}, 1),
	}
	o.wg.Add(2)
	go o.run()
	go o.runRemover()
	return o
}

// Invalidation is an outbox row that a change wrote in its transaction, as
// [Outbox.Record] returns it. The zero Invalidation is no row.
type Invalidation struct {
	ID  int64  // the cache_outbox row
	Key string // the full (prefixed) cache key it names
}

// Record writes the outbox row that invalidates key (unprefixed, as the
// domain builds it) inside tx, the transaction of the change that makes the
// cached value stale, so the invalidation is durable exactly when the
// change is. It is the one place that writes outbox rows: one INSERT on
// tx, no round trip of its own. After the commit (or a commit whose outcome
// is unknown) pass the result to [Outbox.Invalidate].
//
// On a nil *Outbox (a store with no cache in front) it writes nothing and
// returns the zero Invalidation.
func (o *Outbox) Record(ctx context.Context, tx pgx.Tx, key string) (Invalidation, error) {
	if o == nil {
		return Invalidation{}, nil
	}
	full := o.inv.FullKey(key)
	id, err := dbq.New(tx).CacheOutboxInsert(ctx, dbq.CacheOutboxInsertParams{Domain: o.cfg.Domain, CacheKey: full})
	if err != nil {
		return Invalidation{}, fmt.Errorf("outbox: record: %w", err)
	}
	return Invalidation{ID: id, Key: full}, nil
}

// Invalidate runs after the commit that wrote inv's row (or one whose
// outcome is unknown: if it did not commit, there is no row and the pending
// mark clears at the next sweep); the zero Invalidation does nothing. It
// marks the key pending, deletes it from the cache and, when that
// succeeded, clears the mark and queues the row for removal. When the delete fails the row stays
// for the sweeper and the key stays pending, so this process reads it from
// Postgres meanwhile. It ignores ctx's cancellation (the change has
// committed; its invalidation must still happen) and is bounded by the
// Invalidator's own timeout.
//
// While the Invalidator is not Enabled (no-cache mode, closed cache) the
// row stays for an instance that can delete the key, and nothing is marked
// pending: such a process reads from Postgres anyway, and a mark would live
// until another instance swept the row.
func (o *Outbox) Invalidate(ctx context.Context, inv Invalidation) {
	if inv.ID == 0 {
		return
	}
	key, id := inv.Key, inv.ID
	ctx = context.WithoutCancel(ctx)
	if !o.inv.Enabled() {
		_ = o.inv.DeleteFull(ctx, key) // reaches no Redis; forgets the key's in-process loads
		return
	}
	o.markPending(id, key)
	if err := o.inv.DeleteFull(ctx, key); err != nil {
		o.log.Debug("invalidation left to the sweeper", "key", key, "err", err)
		return
	}
	o.clearPending(id)
	o.scheduleRemoval(id)
}

// scheduleRemoval queues the row of an invalidation that reached Redis for
// removal by the remover goroutine, which deletes queued rows in batches
// off the write path (a write then costs one commit, not two). A row whose
// removal is lost (crash, Postgres error) only makes a sweeper delete its
// key once more.
func (o *Outbox) scheduleRemoval(id int64) {
	o.removeMu.Lock()
	o.removeIDs = append(o.removeIDs, id)
	o.removeMu.Unlock()
	select {
	case o.removeWake <- struct{}{}:
	default: // the remover is already due to run
	}
}

// removeQueued deletes the queued rows in one statement.
func (o *Outbox) removeQueued() {
	o.removeMu.Lock()
	ids := o.removeIDs
	o.removeIDs = nil
	o.removeMu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := dbq.New(o.pool).CacheOutboxDelete(ctx, ids); err != nil {
		// The keys are deleted; a sweeper deletes them once more and the rows.
		o.log.Debug("outbox rows left to the sweeper", "rows", len(ids), "err", err)
	}
}

func (o *Outbox) runRemover() {
	defer o.wg.Done()
	for {
		select {
		case <-o.stop:
			o.removeQueued()
			return
		case <-o.removeWake:
			o.removeQueued()
		}
	}
}

// AnyPending reports whether any invalidation of this process has not
// reached the cache yet: one atomic load, for the read path to skip
// building the key it would pass to Pending.
func (o *Outbox) AnyPending() bool { return o.npend.Load() != 0 }

// SkipRedis reports whether a read of key (unprefixed, as the domain builds
// it) must bypass Redis because this process's own invalidation of it is
// pending (Redis may still hold the old value); the value for
// cachelayer.FetchOptions.SkipRedis. With nothing pending it is one atomic
// load and builds no key.
func (o *Outbox) SkipRedis(key string) bool {
	return o.AnyPending() && o.Pending(o.inv.FullKey(key))
}

// Pending reports whether an invalidation of key (full, prefixed) by this
// process has not reached the cache yet.
func (o *Outbox) Pending(key string) bool {
	if o.npend.Load() == 0 {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.byKey[key] > 0
}

func (o *Outbox) markPending(id int64, key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.pending[id]; ok {
		return
	}
	o.pending[id] = key
	o.byKey[key]++
	o.npend.Store(int64(len(o.pending)))
}

func (o *Outbox) clearPending(ids ...int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, id := range ids {
		key, ok := o.pending[id]
		if !ok {
			continue
		}
		delete(o.pending, id)
		if o.byKey[key]--; o.byKey[key] <= 0 {
			delete(o.byKey, key)
		}
	}
	o.npend.Store(int64(len(o.pending)))
}

// Sweep claims this domain's waiting rows oldest first, in batches, with
// FOR UPDATE SKIP LOCKED (instances sweep side by side), deletes their keys
// and removes the rows whose keys were deleted. It stops at the first batch
// whose delete fails and returns that error; then it drops the moot rows
// (see dropMoot). While the Invalidator is not Enabled it claims no rows
// and deletes no keys: it only drops moot rows, and returns nil unless
// Postgres fails. Concurrent calls in one process run one after the other.
func (o *Outbox) Sweep(ctx context.Context) error {
	o.sweepMu.Lock()
	defer o.sweepMu.Unlock()
	defer o.forgetSwept(ctx)
	if !o.inv.Enabled() {
		return o.dropMoot(ctx)
	}
	for {
		n, err := o.sweepBatch(ctx)
		if err != nil {
			return errors.Join(err, o.dropMoot(ctx))
		}
		if n < o.cfg.Batch {
			// Every row this process could claim had its key deleted; rows
			// it could not are other sweepers'. Seeing starts afresh at the
			// next failure (which only delays a drop).
			clear(o.seen)
			o.seenAfter = 0
			return nil
		}
	}
}

// sweepBatch claims one batch, deletes the keys of all its rows (however
// old: deleting a key costs next to nothing, and a row's created_at does not
// tell whether its entry has expired) and removes the rows; when the delete
// fails it keeps them all.
func (o *Outbox) sweepBatch(ctx context.Context) (claimed int, err error) {
	tx, err := o.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return 0, fmt.Errorf("outbox: sweep: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	q := dbq.New(tx)
	rows, err := q.CacheOutboxClaim(ctx, dbq.CacheOutboxClaimParams{Domain: o.cfg.Domain, MaxRows: int32(o.cfg.Batch)})
	if err != nil || len(rows) == 0 {
		if err != nil {
			err = fmt.Errorf("outbox: sweep: claim: %w", err)
		}
		return 0, err
	}
	ids := make([]int64, len(rows))
	keys := make([]string, 0, len(rows))
	seen := make(map[string]bool, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
		if !seen[r.CacheKey] {
			seen[r.CacheKey] = true
			keys = append(keys, r.CacheKey)
		}
	}
	if err := o.inv.DeleteFull(ctx, keys...); err != nil {
		return 0, fmt.Errorf("outbox: sweep: delete %d keys: %w", len(keys), err)
	}
	removed, err := q.CacheOutboxDelete(ctx, ids)
	if err != nil {
		return 0, fmt.Errorf("outbox: sweep: delete rows: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("outbox: sweep: commit: %w", err)
	}
	o.swept.Add(removed)
	o.clearPending(ids...)
	return len(rows), nil
}

// seenPerBatch bounds the rows dropMoot tracks: seenPerBatch × Batch.
const seenPerBatch = 100

// dropMoot runs when a sweep cannot delete keys (Redis unreachable, or the
// Invalidator not Enabled). It removes the rows it saw at least MaxAge ago:
// a row is visible only after its transaction committed, so the entry it
// names has expired by itself since. Then it looks at one more page of rows
// that are older than MaxAge by created_at (a necessary condition, but the
// start of their transaction, so they may have committed a moment ago) and
// notes that it saw them now. Pages follow each other by id and start over
// after the last one, so every row gets seen, also one that committed late
// behind the pages already read. It takes no row locks but its DELETE's.
func (o *Outbox) dropMoot(ctx context.Context) error {
	q := dbq.New(o.pool)
	now := o.cfg.Now()
	var moot []int64
	for id, at := range o.seen {
		if now.Sub(at) >= o.cfg.MaxAge {
			moot = append(moot, id)
		}
	}
	if len(moot) > 0 {
		n, err := q.CacheOutboxDelete(ctx, moot)
		if err != nil {
			return fmt.Errorf("outbox: drop moot rows: %w", err)
		}
		for _, id := range moot {
			delete(o.seen, id)
		}
		o.dropped.Add(n)
		o.clearPending(moot...)
	}
	limit := seenPerBatch * o.cfg.Batch
	if len(o.seen) >= limit {
		return nil
	}
	ids, err := q.CacheOutboxListOld(ctx, dbq.CacheOutboxListOldParams{
		Domain: o.cfg.Domain, MaxAgeSeconds: o.cfg.MaxAge.Seconds(), AfterID: o.seenAfter, MaxRows: int32(o.cfg.Batch),
	})
	if err != nil {
		return fmt.Errorf("outbox: look for old rows: %w", err)
	}
	at := o.cfg.Now() // after the query's snapshot, so after these rows' commits
	for _, id := range ids {
		if _, ok := o.seen[id]; !ok && len(o.seen) < limit {
			o.seen[id] = at
		}
	}
	o.seenAfter = 0 // after the last page, start over
	if len(ids) == o.cfg.Batch {
		o.seenAfter = ids[len(ids)-1]
	}
	return nil
}

// forgetSwept clears pending marks whose rows another instance removed.
func (o *Outbox) forgetSwept(ctx context.Context) {
	o.mu.Lock()
	ids := make([]int64, 0, len(o.pending))
	for id := range o.pending {
		ids = append(ids, id)
	}
	o.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	present, err := dbq.New(o.pool).CacheOutboxPresent(ctx, ids)
	if err != nil {
		return
	}
	still := make(map[int64]bool, len(present))
	for _, id := range present {
		still[id] = true
	}
	var gone []int64
	for _, id := range ids {
		if !still[id] {
			gone = append(gone, id)
		}
	}
	o.clearPending(gone...)
}

// Stats returns the domain's depth and oldest row age from the table and
// this process's counters.
func (o *Outbox) Stats(ctx context.Context) (Stats, error) {
	row, err := dbq.New(o.pool).CacheOutboxStats(ctx, o.cfg.Domain)
	if err != nil {
		return Stats{}, fmt.Errorf("outbox: stats: %w", err)
	}
	o.mu.Lock()
	pending := len(o.byKey)
	o.mu.Unlock()
	return Stats{
		Depth:     row.Depth,
		OldestAge: time.Duration(row.OldestAgeSeconds * float64(time.Second)),
		Pending:   pending,
		Swept:     o.swept.Load(),
		Dropped:   o.dropped.Load(),
		Failures:  o.failures.Load(),
	}, nil
}

func (o *Outbox) run() {
	defer o.wg.Done()
	t := time.NewTicker(o.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(10*time.Second, 5*o.cfg.Interval))
		err := o.Sweep(ctx)
		cancel()
		switch {
		case err != nil:
			o.failures.Add(1)
			if !o.failing.Swap(true) {
				o.log.Warn("cache invalidation sweep failing; rows kept for the next sweep", "err", err)
			}
		case o.failing.Swap(false):
			o.log.Info("cache invalidation sweep recovered")
		}
	}
}

// Close stops the sweeper and waits for a sweep in progress, then removes
// the rows of invalidations that reached Redis. It is idempotent. Rows left
// in the table are swept by any other instance.
func (o *Outbox) Close() error {
	o.closeOnce.Do(func() { close(o.stop) })
	o.wg.Wait()
	return nil
}
