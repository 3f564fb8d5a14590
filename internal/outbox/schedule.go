package outbox

import (
	"context"
	"errors"
	"time"
)

// externalOnly is the claim grace of a sweep woken by a notification: no
// row of the library's own is that old (it would be dropped as moot
// first), so the sweep claims the external rows only.
const externalOnly = 100 * 365 * 24 * time.Hour

// run takes a step every EpochPoll, and one whenever the LISTEN connection
// is notified, until Close.
func (o *Outbox) run() {
	defer o.wg.Done()
	t := time.NewTicker(o.cfg.EpochPoll)
	defer t.Stop()
	woken := false
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
		case <-o.wake:
			woken = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(10*time.Second, 5*o.cfg.Interval))
		o.step(ctx, woken)
		cancel()
		woken = false
	}
}

// step is what the sweeper does at each tick: when the TopologyEpoch has
// changed, a re-delete pass and a sweep at once (no I/O otherwise: the
// epoch is an atomic load); else a sweep when one is due: Interval after
// the last while there is work (this process has pending invalidations, or
// the last sweep found rows, failed, or left re-deletes to retry),
// IdleInterval after it otherwise; and, when woken by a notification with
// no sweep due, a sweep of the external rows. A quiet instance so costs
// Postgres one statement per IdleInterval and domain.
func (o *Outbox) step(ctx context.Context, woken bool) {
	o.sweepMu.Lock()
	defer o.sweepMu.Unlock()
	err := o.maintainNamespaceLocked(ctx)
	ran := err != nil
	if o.inv.Enabled() {
		if epoch := o.inv.TopologyEpoch(); epoch != o.epoch || o.repass {
			if o.repass {
				o.repass, o.pass = false, nil // the whole pass again
			}
			err, ran = o.redeleteLocked(ctx, epoch), true
		}
	}
	wait := o.cfg.IdleInterval
	switch {
	case ran && o.pass == nil:
		// The epoch moved: Redis (or a shard) may be back from an outage
		// during which any instance's invalidations failed, this one's or
		// a dead writer's. Sweep now rather than at the idle interval.
		wait = 0
	case o.busy || o.AnyPending() || len(o.retry)+len(o.retryPrefix) > 0:
		wait = o.cfg.Interval
	}
	switch {
	case o.cfg.Now().Sub(o.lastSweep) >= wait:
		err, ran = errors.Join(err, o.sweepLocked(ctx, o.claimGrace())), true
	case woken:
		// A trigger notified: a change made outside the library committed
		// rows, claimed at once. Only those: the library's own rows are
		// their writers' to mark, and every instance is woken alike. It
		// leaves the schedule of the regular sweeps as it was, so a stream
		// of notifications never postpones them.
		last, busy := o.lastSweep, o.busy
		serr := o.sweepLocked(ctx, externalOnly)
		o.lastSweep, o.busy = last, busy || serr != nil
		err, ran = errors.Join(err, serr), true
	}
	if !ran {
		return
	}
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
