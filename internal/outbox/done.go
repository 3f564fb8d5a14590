package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/ghl-agency/ghlcache/internal/dbq"
)

// queueDone queues the row of an invalidation whose delete succeeded, to be
// marked done in a batch off the write path (a write then costs its
// commit and nothing more in Postgres). epoch is the TopologyEpoch read
// before the delete: if it has changed since, the delete may have reached a
// master that lost it, and a re-delete pass may already have read the done
// rows, so queueDone queues nothing and returns false; the row then keeps
// waiting for the sweeper. The check and the append happen under doneMu,
// which a re-delete pass also takes (after reading the new epoch) to flush
// the queue: either the row is queued before that flush, and the pass reads
// it done, or the epoch had changed before the check.
//
// A mark that is lost (crash, Postgres error) only makes a sweeper delete
// the key once more.
func (o *Outbox) queueDone(id int64, epoch uint64) bool {
	o.doneMu.Lock()
	if o.inv.TopologyEpoch() != epoch {
		o.doneMu.Unlock()
		return false
	}
	o.doneIDs = append(o.doneIDs, id)
	n := len(o.doneIDs)
	o.doneMu.Unlock()
	if n == 1 || n >= o.cfg.FlushMax {
		select {
		case o.doneWake <- struct{}{}:
		default: // the marker is already due to look
		}
	}
	return true
}

// doneQueued returns how many rows wait to be marked done.
func (o *Outbox) doneQueued() int {
	o.doneMu.Lock()
	defer o.doneMu.Unlock()
	return len(o.doneIDs)
}

// flushDone marks the queued rows done in one statement. When it returns,
// every row queued before the call is marked, or failed to be (it then
// keeps waiting, and a sweep deletes its key once more).
func (o *Outbox) flushDone(ctx context.Context) error {
	o.flushMu.Lock()
	defer o.flushMu.Unlock()
	o.doneMu.Lock()
	ids := o.doneIDs
	o.doneIDs = nil
	o.doneMu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if _, err := dbq.New(o.pool).CacheOutboxMarkDone(ctx, ids); err != nil {
		return fmt.Errorf("outbox: mark %d rows done: %w", len(ids), err)
	}
	return nil
}

// runMarker marks queued rows done: FlushInterval after the first of them
// was queued, or as soon as FlushMax are, and once more on Close.
func (o *Outbox) runMarker() {
	defer o.wg.Done()
	flush := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := o.flushDone(ctx); err != nil {
			// The keys are deleted; a sweeper deletes them once more and marks the rows.
			o.log.Debug("outbox rows left to the sweeper", "err", err)
		}
	}
	for {
		select {
		case <-o.stop:
			flush()
			return
		case <-o.doneWake:
		}
		if o.doneQueued() < o.cfg.FlushMax {
			t := time.NewTimer(o.cfg.FlushInterval)
		wait:
			for {
				select {
				case <-o.stop:
					t.Stop()
					flush()
					return
				case <-t.C:
					break wait
				case <-o.doneWake:
					if o.doneQueued() >= o.cfg.FlushMax {
						t.Stop()
						break wait
					}
				}
			}
		}
		flush()
	}
}
