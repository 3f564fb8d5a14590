package cachelayer

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every script here touches one key (KEYS[1]), so all of them work on
// Redis Cluster. A lease ARGV[1] counts as in the key whether or not a
// waiter has marked it ("\0W" instead of "\0L", see stepScript).

// renewScript extends the lease ARGV[1] to ARGV[2] ms, only while it is in
// the key; returns 1 if it did.
var renewScript = redis.NewScript(`
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if ok and v and (v == ARGV[1] or v == '\0W' .. string.sub(ARGV[1], 3)) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// stepScript is a flight's step after its caller's read: it returns the
// key's string if it holds one (other than the expected undecodable entry
// ARGV[4], when ARGV[3] is "1"), else puts the lease ARGV[1] in it for
// ARGV[2] ms. A key of another type is replaced. When ARGV[5] is "1" (the
// flight is subscribed to fill notifications) a plain lease it finds is
// marked "has waiters", keeping its TTL, and returned marked, so that its
// holder's fill announces itself.
//
// Replies: {0} lease taken, {1} lease taken after replacing a key of
// another type, {2, v} the key holds v.
var stepScript = redis.NewScript(`
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if not ok then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
if v and not (ARGV[3] == '1' and v == ARGV[4]) then
  if ARGV[5] == '1' and string.len(v) == 18 and string.sub(v, 1, 2) == '\0L' then
    v = '\0W' .. string.sub(v, 3)
    redis.call('SET', KEYS[1], v, 'KEEPTTL')
  end
  return {2, v}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0}
`)

// fillScript replaces the lease ARGV[1] by the entry ARGV[2] for ARGV[3]
// ms, only while the lease is there; returns 1 if it did. If a waiter had
// marked the lease, it also publishes the key on the channel ARGV[4] (a
// failed publish, such as one an ACL forbids, fails nothing: waiters
// re-check by themselves).
const fillSource = `
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if not (ok and v) then return 0 end
if v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if v == '\0W' .. string.sub(ARGV[1], 3) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  pcall(redis.call, 'PUBLISH', ARGV[4], KEYS[1])
  return 1
end
return 0
`

var fillScript = redis.NewScript(fillSource)

// releaseScript deletes the key only while it holds the lease ARGV[1],
// publishing the key on ARGV[2] if a waiter had marked the lease (the
// waiters then take a lease of their own at once).
var releaseScript = redis.NewScript(`
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if not (ok and v) then return 0 end
if v == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
if v == '\0W' .. string.sub(ARGV[1], 3) then
  redis.call('DEL', KEYS[1])
  pcall(redis.call, 'PUBLISH', ARGV[2], KEYS[1])
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
