package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/ghl-agency/ghlcache/internal/dbq"
)

// redeleteLocked runs when the Invalidator's TopologyEpoch has changed to
// epoch (or the last pass could not remember all its failures): a failover
// may have promoted a replica that missed deletes its master acknowledged,
// so the keys of every done row younger than MaxAge (any instance's: the
// entries they name may still be there until their TTL) are deleted again,
// page after page of Batch rows, each distinct key once. Rows queued by
// this process's invalidations are marked done first, so the pass reads
// them (see queueDone for the other half). A key whose delete fails is
// retried at every sweep until it succeeds or is MaxAge old. When Postgres
// fails the pass is not done and runs again at the next step.
//
// The caller holds sweepMu.
func (o *Outbox) redeleteLocked(ctx context.Context, epoch uint64) error {
	if err := o.flushDone(ctx); err != nil {
		// Those rows still wait: the next sweep deletes their keys on the new topology.
		o.log.Debug("outbox rows left to the sweeper", "err", err)
	}
	q := dbq.New(o.pool)
	now := o.cfg.Now()
	deleted := make(map[string]bool)
	var afterDone time.Time
	var afterID int64
	failed := 0
	for {
		rows, err := q.CacheOutboxRecent(ctx, dbq.CacheOutboxRecentParams{
			Domain: o.cfg.Domain, KeepSeconds: o.cfg.MaxAge.Seconds(),
			AfterDoneAt: afterDone, AfterID: afterID, MaxRows: int32(o.cfg.Batch),
		})
		if err != nil {
			return fmt.Errorf("outbox: re-delete after a topology change: %w", err)
		}
		var keys []string
		for _, r := range rows {
			if !deleted[r.CacheKey] {
				deleted[r.CacheKey] = true
				keys = append(keys, r.CacheKey)
			}
		}
		if len(keys) > 0 {
			errs := o.inv.DeleteFullEach(ctx, keys)
			for i, k := range keys {
				if errs == nil || errs[i] == nil {
					o.redeleted.Add(1)
					delete(o.retry, k)
					continue
				}
				failed++
				o.noteRetry(k, now)
			}
		}
		if len(rows) < o.cfg.Batch {
			break
		}
		last := rows[len(rows)-1]
		afterDone, afterID = last.DoneAt, last.ID
	}
	o.epoch = epoch
	if failed > 0 {
		return fmt.Errorf("%w: %d re-deletes after a topology change (retried at each sweep)", errKeysFailed, failed)
	}
	return nil
}

// maxRetries bounds the keys whose failed re-deletes are remembered; past
// it the next step runs the whole pass again.
func (o *Outbox) maxRetries() int { return seenPerBatch * o.cfg.Batch }

// noteRetry remembers a key whose re-delete failed.
func (o *Outbox) noteRetry(key string, now time.Time) {
	if _, ok := o.retry[key]; ok {
		return
	}
	if len(o.retry) >= o.maxRetries() {
		o.repass = true
		return
	}
	o.retry[key] = now
}

// retryRedeletes deletes again the keys whose re-delete failed, forgetting
// those it first failed at least MaxAge ago (their entries have expired).
// The caller holds sweepMu.
func (o *Outbox) retryRedeletes(ctx context.Context) error {
	if len(o.retry) == 0 {
		return nil
	}
	now := o.cfg.Now()
	keys := make([]string, 0, len(o.retry))
	for k, at := range o.retry {
		if now.Sub(at) >= o.cfg.MaxAge {
			delete(o.retry, k)
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil
	}
	errs := o.inv.DeleteFullEach(ctx, keys)
	failed := 0
	for i, k := range keys {
		if errs == nil || errs[i] == nil {
			o.redeleted.Add(1)
			delete(o.retry, k)
		} else {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d re-deletes after a topology change", errKeysFailed, failed)
	}
	return nil
}
