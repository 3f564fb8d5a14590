package cachelayer

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// renewScript extends the lease ARGV[1] to ARGV[2] ms, only while it is in
// the key; returns 1 if it did.
var renewScript = redis.NewScript(`
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if ok and v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// leaseKeeper renews a lease while its holder loads, so that a load slower
// than LeaseTTL (but within LoadTimeout) keeps its lease and can fill. A
// renewal is sent every LeaseTTL/3, from a timer (no goroutine waits for
// it): loads faster than that cost no extra round trip.
type leaseKeeper struct {
	c           *Cache
	full, token string

	mu         sync.Mutex  // held during a renewal; guards the fields below
	timer      *time.Timer // the next renewal
	stopped    bool
	validUntil time.Time // the lease lives at least until then (last set or renewal, as sent, + LeaseTTL)
}

// keepLease starts renewing the lease token on full, set by a call sent at
// sent.
func (c *Cache) keepLease(full, token string, sent time.Time) *leaseKeeper {
	k := &leaseKeeper{c: c, full: full, token: token, validUntil: sent.Add(c.cfg.LeaseTTL)}
	k.mu.Lock()
	k.timer = time.AfterFunc(k.interval(), k.renew)
	k.mu.Unlock()
	return k
}

func (k *leaseKeeper) interval() time.Duration { return max(k.c.cfg.LeaseTTL/3, time.Millisecond) }

// renew extends the lease once and schedules the next renewal, unless the
// keeper is stopped or the lease is gone (voided: the fill will be refused).
func (k *leaseKeeper) renew() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	c := k.c
	if c.breakerFor(k.full).allow() {
		ctx := context.Background()
		sent := time.Now()
		opCtx, cancel := c.opCtx(ctx)
		n, err := renewScript.Run(opCtx, c.rdb, []string{k.full}, k.token, c.cfg.LeaseTTL.Milliseconds()).Int64()
		cancel()
		switch err = c.outcomeFor(ctx, k.full, err); {
		case err != nil:
			// Redis failed: try again at the next tick while the lease may live.
		case n == 1:
			k.validUntil = sent.Add(c.cfg.LeaseTTL)
			if c.hookLeaseRenewed != nil {
				c.hookLeaseRenewed(k.full)
			}
		default:
			return // voided by an invalidation: nothing left to renew
		}
	}
	k.timer.Reset(k.interval())
}

// stop ends the renewals (waiting for one in progress) and returns until
// when the lease was certainly alive, had nothing voided it.
func (k *leaseKeeper) stop() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.timer.Stop()
	k.stopped = true
	return k.validUntil
}
