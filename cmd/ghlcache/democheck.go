package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/workflows"
)

// demoUnreachableGrace is how long the check waits for a Redis that fails
// every call before it reports that it could not verify the cache: longer
// than the breaker's cooldown (1 s) and go-redis's reconnect after a
// restart (~1 s).
const demoUnreachableGrace = 3 * time.Second

// demoConsistency is the final check. Verified is false when the check
// could not compare (Reason says why); Passed means verified and no
// mismatch.
type demoConsistency struct {
	BalancesChecked    int      `json:"balances_checked"`
	BalancesCached     int      `json:"balances_cached"`
	DefinitionsCached  int      `json:"definitions_cached"`
	Mismatches         int      `json:"mismatches"`
	Examples           []string `json:"examples,omitempty"`
	Verified           bool     `json:"verified"`
	Reason             string   `json:"reason,omitempty"`
	Passed             bool     `json:"passed"`
	OutboxDepthAtCheck int64    `json:"outbox_depth"`
}

// errRedisUnreachable is the check's own verdict on Redis.
var errRedisUnreachable = errors.New("could not verify the cache (Redis unreachable)")

// check waits until every invalidation has reached Redis, then compares
// every cached balance and definition with Postgres. It tells a Redis it
// cannot reach (nothing to compare: Verified false) from a mismatch.
func (d *demo) check(ctx context.Context) demoConsistency {
	c := demoConsistency{Verified: true}
	unverified := func(err error) demoConsistency {
		c.Verified, c.Passed = false, false
		if errors.Is(err, errRedisUnreachable) || errors.Is(err, cachelayer.ErrUnavailable) {
			c.Reason = errRedisUnreachable.Error()
			if c.OutboxDepthAtCheck > 0 {
				c.Reason += fmt.Sprintf(": %d invalidation(s) still wait in the outbox", c.OutboxDepthAtCheck)
			}
		} else {
			c.Reason = "could not verify the cache: " + err.Error()
		}
		return c
	}
	// In no-cache mode there is nothing to wait for: no key was cached, and
	// the outbox rows stay for an instance with Redis to sweep.
	if d.cache.Enabled() {
		depth, err := d.drainOutbox(ctx)
		c.OutboxDepthAtCheck = depth
		if err != nil {
			return unverified(err)
		}
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	mismatch := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		c.Mismatches++
		if len(c.Examples) < 5 {
			c.Examples = append(c.Examples, fmt.Sprintf(format, args...))
		}
	}
	// One deadline for every Get that waits out an open breaker.
	deadline := time.Now().Add(demoQuiesceTimeout)
	const workers = 8
	for w := range workers {
		wg.Go(func() {
			var checked, cachedBal, cachedDef int
			defer func() {
				mu.Lock()
				c.BalancesChecked += checked
				c.BalancesCached += cachedBal
				c.DefinitionsCached += cachedDef
				mu.Unlock()
			}()
			fail := func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
			for i := w; i < d.opts.users; i += workers {
				for _, t := range demoCreditTypes {
					u := d.firstUser + int64(i)
					var got credits.Balance
					found, err := getRetrying(ctx, d.cache, credits.Key(u, t), &got, deadline)
					if err != nil {
						fail(err)
						return
					}
					checked++
					if !found {
						continue
					}
					cachedBal++
					want, err := d.creditStore.Balance(ctx, u, t)
					if err != nil {
						fail(err)
						return
					}
					if got.Amount != want.Amount || got.Version != want.Version {
						mismatch("%s: cached %d (version %d), Postgres %d (version %d)",
							credits.Key(u, t), got.Amount, got.Version, want.Amount, want.Version)
					}
				}
			}
			for i := w; i < len(d.defIDs); i += workers {
				var got workflows.Definition
				found, err := getRetrying(ctx, d.cache, workflows.Key(d.defIDs[i]), &got, deadline)
				if errors.Is(err, cachelayer.ErrNotFound) {
					continue
				}
				if err != nil {
					fail(err)
					return
				}
				if !found {
					continue
				}
				cachedDef++
				want, err := d.wfStore.Definition(ctx, d.defIDs[i])
				if err != nil {
					fail(err)
					return
				}
				if got.Version != want.Version {
					mismatch("%s: cached version %d, Postgres version %d", workflows.Key(d.defIDs[i]), got.Version, want.Version)
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		// Redis failing during the comparison is the likely cause; say
		// that rather than the first of many timeouts.
		for _, err := range errs {
			if errors.Is(err, cachelayer.ErrUnavailable) {
				return unverified(err)
			}
		}
		return unverified(errs[0])
	}
	c.Passed = c.Mismatches == 0
	return c
}

// drainOutbox sweeps both outboxes until no invalidation is left and
// returns the depth it saw last. It gives up with errRedisUnreachable when
// every sweep for demoUnreachableGrace failed for want of Redis and Redis
// does not answer a health check, and with an error at demoQuiesceTimeout.
func (d *demo) drainOutbox(ctx context.Context) (int64, error) {
	qctx, cancel := context.WithTimeout(ctx, demoQuiesceTimeout)
	defer cancel()
	var depth int64
	var failingSince time.Time // zero: the last sweep reached Redis
	for {
		// While the breaker is open a sweep fails; keep trying (the
		// breaker's probe is one of these calls).
		err := errors.Join(d.credits.Sweep(qctx), d.workflows.Sweep(qctx))
		unavailable := errors.Is(err, cachelayer.ErrUnavailable)
		if err != nil && !unavailable && qctx.Err() == nil {
			return depth, err
		}
		cs, err1 := d.credits.OutboxStats(qctx)
		ws, err2 := d.workflows.OutboxStats(qctx)
		if err := errors.Join(err1, err2); err != nil && qctx.Err() == nil {
			return depth, err
		}
		if err1 == nil && err2 == nil {
			depth = cs.Depth + ws.Depth
		}
		if depth == 0 && err1 == nil && err2 == nil {
			return 0, nil
		}
		switch {
		case !unavailable:
			failingSince = time.Time{}
		case failingSince.IsZero():
			failingSince = time.Now()
		case time.Since(failingSince) >= demoUnreachableGrace && !d.cache.Health(qctx).Healthy:
			return depth, errRedisUnreachable
		}
		select {
		case <-qctx.Done():
			if ctx.Err() == nil && unavailable {
				return depth, errRedisUnreachable
			}
			return depth, fmt.Errorf("the outbox still holds %d invalidation(s) after %s: %w", depth, demoQuiesceTimeout, qctx.Err())
		case <-time.After(20 * time.Millisecond): // poll, bounded by qctx
		}
	}
}

// getRetrying is cache.Get that waits out an open breaker (a Redis call
// slower than the cache's timeout on a loaded machine opens it), until
// deadline.
func getRetrying(ctx context.Context, c *cachelayer.Cache, key string, dst any, deadline time.Time) (bool, error) {
	for {
		found, err := c.Get(ctx, key, dst)
		if !errors.Is(err, cachelayer.ErrUnavailable) || time.Now().After(deadline) {
			return found, err
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(50 * time.Millisecond): // the breaker's cooldown is 1 s
		}
	}
}
