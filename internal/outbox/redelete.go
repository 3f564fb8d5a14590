package outbox

import (
	"cmp"
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
// page after page of Batch rows, each distinct key once per pass. Rows
// queued by this process's invalidations are marked done first, so the
// pass reads them (see queueDone for the other half). A key whose delete
// fails is retried at every sweep until it succeeds or is MaxAge old. When
// Postgres fails (or the step's time runs out) the pass resumes from its
// last page at the next step; a newer epoch starts it afresh.
//
// The caller holds sweepMu.
func (o *Outbox) redeleteLocked(ctx context.Context, epoch uint64) error {
	if o.pass == nil || o.pass.epoch != epoch {
		o.pass = &redeletePass{epoch: epoch, deleted: make(map[string]bool)}
		if err := o.flushDone(ctx); err != nil {
			// Those rows still wait: the next sweep deletes their keys on the new topology.
			o.log.Debug("outbox rows left to the sweeper", "err", err)
		}
	}
	p := o.pass
	q := dbq.New(o.pool)
	now := o.cfg.Now()
	failed := 0
	var keyErr error
	for {
		rows, err := q.CacheOutboxRecent(ctx, dbq.CacheOutboxRecentParams{
			Domain: o.cfg.Domain, KeepSeconds: o.cfg.MaxAge.Seconds(),
			AfterDoneAt: p.afterDone, AfterID: p.afterID, MaxRows: int32(o.cfg.Batch),
		})
		if err != nil {
			return fmt.Errorf("outbox: re-delete after a topology change: %w", err)
		}
		var keys []string
		for _, r := range rows {
			if r.WholePrefix {
				// A TRUNCATE or a bulk change: every key under it again.
				if _, err := o.inv.DeleteFullPrefix(ctx, r.CacheKey); err != nil {
					failed++
					keyErr = cmp.Or(keyErr, err)
					if _, ok := o.retryPrefix[r.CacheKey]; !ok {
						o.retryPrefix[r.CacheKey] = now // few: one per namespace
					}
				}
				continue
			}
			if !p.deleted[r.CacheKey] {
				p.deleted[r.CacheKey] = true
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
				keyErr = cmp.Or(keyErr, errs[i])
				o.noteRetry(k, now)
			}
		}
		if len(rows) < o.cfg.Batch {
			break
		}
		last := rows[len(rows)-1]
		p.afterDone, p.afterID = last.DoneAt, last.ID
	}
	o.epoch, o.pass = epoch, nil
	if failed > 0 {
		return fmt.Errorf("%w: %d re-deletes after a topology change (retried at each sweep): %w", errKeysFailed, failed, keyErr)
	}
	return nil
}

// redeletePass is a re-delete pass under way: the epoch it is for, and its
// cursor over the done rows.
type redeletePass struct {
	epoch     uint64
	afterDone time.Time       // the last page's last row: (done_at, id)
	afterID   int64           //
	deleted   map[string]bool // keys this pass deleted (or tried to), each once
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
	if len(o.retry) == 0 && len(o.retryPrefix) == 0 {
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
	failed := 0
	var keyErr error
	for p, at := range o.retryPrefix {
		switch _, err := o.inv.DeleteFullPrefix(ctx, p); {
		case err == nil:
			o.redeleted.Add(1)
			delete(o.retryPrefix, p)
		case now.Sub(at) >= o.cfg.MaxAge:
			delete(o.retryPrefix, p)
		default:
			failed++
			keyErr = cmp.Or(keyErr, err)
		}
	}
	var errs []error
	if len(keys) > 0 {
		errs = o.inv.DeleteFullEach(ctx, keys)
	}
	for i, k := range keys {
		if errs == nil || errs[i] == nil {
			o.redeleted.Add(1)
			delete(o.retry, k)
		} else {
			failed++
			keyErr = cmp.Or(keyErr, errs[i])
		}
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d re-deletes after a topology change: %w", errKeysFailed, failed, keyErr)
	}
	return nil
}
