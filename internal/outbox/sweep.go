package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ghl-agency/ghlcache/internal/dbq"
)

// errKeysFailed reports keys whose deletes failed in a sweep; their rows
// keep waiting.
var errKeysFailed = errors.New("outbox: keys not deleted")

// Sweep marks done the rows this process's invalidations queued, removes
// the done rows kept longer than MaxAge, and, when any row of the domain
// waits, claims the waiting rows in id order, in batches, with FOR UPDATE
// SKIP LOCKED (instances sweep side by side), deletes their keys and marks
// done the rows whose keys were deleted. A key whose delete fails holds
// back nothing: its rows keep waiting and the sweep goes on with the next
// rows and batches (each row is claimed at most once per sweep). Then it
// retries the re-deletes left from a topology change, and when any delete
// failed it drops the moot rows (see dropMoot) and returns an error. While
// the Invalidator is not Enabled it claims no rows and deletes no keys: it
// only drops moot rows, and returns nil unless Postgres fails. Concurrent
// calls in one process run one after the other.
//
// Sweep claims every waiting row; the sweeper's own sweeps leave the rows
// younger (by created_at) than twice FlushInterval to their writers, which
// are most likely delivering them (and look again after Interval), so that
// instances under load do not delete each other's keys twice.
func (o *Outbox) Sweep(ctx context.Context) error {
	o.sweepMu.Lock()
	defer o.sweepMu.Unlock()
	return o.sweepLocked(ctx, 0)
}

// claimGrace is how young (by created_at) a waiting row is left to its
// writer by the sweeper's own sweeps: the writer marks it done within
// FlushInterval of its commit when its delete succeeds.
func (o *Outbox) claimGrace() time.Duration { return 2 * o.cfg.FlushInterval }

func (o *Outbox) sweepLocked(ctx context.Context, grace time.Duration) (err error) {
	o.lastSweep = o.cfg.Now()
	if !o.inv.Enabled() {
		// Nothing to deliver; moot rows are dropped on the idle schedule.
		o.busy = false
		return o.dropMoot(ctx)
	}
	found, failed := false, false
	defer func() { o.busy = found || failed || err != nil || len(o.retry)+len(o.retryPrefix) > 0 }()

	var errs []error
	if err := o.flushDone(ctx); err != nil {
		errs = append(errs, err) // those rows still wait: claimed below, their keys deleted once more
	}
	pending := o.pendingIDs() // before the query: their rows committed before they were marked
	refresh := o.refreshDue()
	tidy, err := dbq.New(o.pool).CacheOutboxTidy(ctx, dbq.CacheOutboxTidyParams{
		Domain: o.cfg.Domain, KeepSeconds: o.cfg.MaxAge.Seconds(), GraceSeconds: grace.Seconds(),
		Refresh: refresh, Prefix: o.prefix, LiveSeconds: o.liveSeconds(),
	})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("outbox: sweep: %w", err))...)
	}
	if refresh {
		if err := o.refreshedLocked(ctx, tidy.WasLive); err != nil {
			errs = append(errs, err)
		}
	}
	o.cleaned.Add(tidy.Cleaned)
	found = tidy.Waiting // rows left to their writers too: look again after Interval
	if tidy.Claimable {
		claimed, nfailed, keyErr, err := o.sweepWaiting(ctx, grace)
		failed = nfailed > 0
		if nfailed > 0 {
			errs = append(errs, fmt.Errorf("%w: %d of %d rows' keys: %w", errKeysFailed, nfailed, claimed, keyErr))
		}
		if err != nil {
			failed = true
			errs = append(errs, err)
		}
	}
	if err := o.retryRedeletes(ctx); err != nil {
		errs = append(errs, err)
	}
	switch {
	case !tidy.Waiting:
		o.clearPending(pending...) // none of their rows waits
	case len(pending) > 0:
		o.forgetSwept(ctx, pending)
	}
	if failed {
		errs = append(errs, o.dropMoot(ctx))
	} else {
		// Every waiting row this process could claim had its key deleted;
		// rows it could not are other sweepers'. Seeing starts afresh at
		// the next failure (which only delays a drop).
		clear(o.seen)
		o.seenAfter = 0
	}
	return errors.Join(errs...)
}

// sweepWaiting claims the waiting rows batch after batch, each after the
// last row of the one before, until a batch comes back short. keyErr is
// the first key's delete error (it says why: cachelayer.ErrUnavailable).
func (o *Outbox) sweepWaiting(ctx context.Context, grace time.Duration) (claimed, failed int, keyErr, err error) {
	var after int64
	for {
		n, nfailed, last, kerr, err := o.sweepBatch(ctx, after, grace)
		claimed += n
		failed += nfailed
		keyErr = cmp.Or(keyErr, kerr)
		if err != nil || n < o.cfg.Batch {
			return claimed, failed, keyErr, err
		}
		after = last
	}
}

// sweepBatch claims one batch after row id after, deletes the keys of all
// its rows (however old: deleting a key costs next to nothing, and a row's
// created_at does not tell whether its entry has expired) and marks done
// the rows whose keys were deleted; the others keep waiting.
func (o *Outbox) sweepBatch(ctx context.Context, after int64, grace time.Duration) (claimed, failed int, last int64, keyErr, err error) {
	tx, err := o.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return 0, 0, 0, nil, fmt.Errorf("outbox: sweep: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	q := dbq.New(tx)
	rows, err := q.CacheOutboxClaim(ctx, dbq.CacheOutboxClaimParams{
		Domain: o.cfg.Domain, AfterID: after, GraceSeconds: grace.Seconds(), MaxRows: int32(o.cfg.Batch),
	})
	if err != nil || len(rows) == 0 {
		if err != nil {
			err = fmt.Errorf("outbox: sweep: claim: %w", err)
		}
		return 0, 0, 0, nil, err
	}
	keys := make([]string, 0, len(rows))
	index := make(map[string]int, len(rows)) // key → its place in keys
	prefixErrs := map[string]error{}         // whole_prefix rows: prefix → its delete's outcome
	for _, r := range rows {
		if r.WholePrefix {
			if _, ok := prefixErrs[r.CacheKey]; !ok {
				_, prefixErrs[r.CacheKey] = o.inv.DeleteFullPrefix(ctx, r.CacheKey)
			}
			continue
		}
		if _, ok := index[r.CacheKey]; !ok {
			index[r.CacheKey] = len(keys)
			keys = append(keys, r.CacheKey)
		}
	}
	var errs []error
	if len(keys) > 0 {
		errs = o.inv.DeleteFullEach(ctx, keys)
	}
	done := make([]int64, 0, len(rows))
	for _, r := range rows {
		var err error
		switch {
		case r.WholePrefix:
			err = prefixErrs[r.CacheKey]
		case errs != nil:
			err = errs[index[r.CacheKey]]
		}
		if err == nil {
			done = append(done, r.ID)
		} else if keyErr == nil {
			keyErr = err
		}
	}
	claimed, failed, last = len(rows), len(rows)-len(done), rows[len(rows)-1].ID
	if len(done) == 0 {
		return claimed, failed, last, keyErr, nil // nothing to mark; the rollback releases the rows
	}
	marked, err := q.CacheOutboxMarkDone(ctx, done)
	if err != nil {
		return claimed, claimed, last, keyErr, fmt.Errorf("outbox: sweep: mark rows done: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return claimed, claimed, last, keyErr, fmt.Errorf("outbox: sweep: commit: %w", err)
	}
	o.swept.Add(marked)
	o.clearPending(done...)
	return claimed, failed, last, keyErr, nil
}

// seenPerBatch bounds the rows dropMoot tracks: seenPerBatch × Batch.
const seenPerBatch = 100

// dropMoot runs when a sweep could not delete some keys (Redis or a shard
// unreachable, or the Invalidator not Enabled). It removes the rows it saw
// waiting at least MaxAge ago and still waiting: a row is visible only
// after its transaction committed, so the entry it names has expired by
// itself since. Then it looks at one more page of waiting rows that are
// older than MaxAge by created_at (a necessary condition, but the start of
// their transaction, so they may have committed a moment ago) and notes
// that it saw them now. Pages follow each other by id and start over after
// the last one, so every row gets seen, also one that committed late
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
		n, err := q.CacheOutboxDropMoot(ctx, moot)
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

// forgetSwept clears the pending marks (of ids, taken before the sweep's
// first query) whose rows no longer wait: another instance marked them
// done, or they never committed.
func (o *Outbox) forgetSwept(ctx context.Context, ids []int64) {
	waiting, err := dbq.New(o.pool).CacheOutboxWaitingAmong(ctx, ids)
	if err != nil {
		return
	}
	still := make(map[int64]bool, len(waiting))
	for _, id := range waiting {
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
