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

// demoConsistency is the final check.
type demoConsistency struct {
	BalancesChecked    int      `json:"balances_checked"`
	BalancesCached     int      `json:"balances_cached"`
	DefinitionsCached  int      `json:"definitions_cached"`
	Mismatches         int      `json:"mismatches"`
	Examples           []string `json:"examples,omitempty"`
	Passed             bool     `json:"passed"`
	OutboxDepthAtCheck int64    `json:"outbox_depth"`
}

// check waits until every invalidation has reached Redis, then compares
// every cached balance and definition with Postgres.
func (d *demo) check(ctx context.Context) (demoConsistency, error) {
	var c demoConsistency
	qctx, cancel := context.WithTimeout(ctx, demoQuiesceTimeout)
	defer cancel()
	// In no-cache mode there is nothing to wait for: no key was cached, and
	// the outbox rows stay for an instance with Redis to sweep.
	for d.cache.Enabled() {
		// While the breaker is open a sweep fails; keep trying until the
		// deadline (the breaker's probe is one of these calls).
		err := errors.Join(d.credits.Sweep(qctx), d.workflows.Sweep(qctx))
		if err != nil && !errors.Is(err, cachelayer.ErrUnavailable) {
			return c, err
		}
		cs, err1 := d.credits.OutboxStats(qctx)
		ws, err2 := d.workflows.OutboxStats(qctx)
		if err := errors.Join(err1, err2); err != nil {
			return c, err
		}
		c.OutboxDepthAtCheck = cs.Depth + ws.Depth
		if c.OutboxDepthAtCheck == 0 {
			break
		}
		select {
		case <-qctx.Done():
			return c, fmt.Errorf("outbox still holds %d invalidations: %w", c.OutboxDepthAtCheck, qctx.Err())
		case <-time.After(20 * time.Millisecond): // poll, bounded by qctx
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
					found, err := getRetrying(ctx, d.cache, credits.Key(u, t), &got)
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
				found, err := getRetrying(ctx, d.cache, workflows.Key(d.defIDs[i]), &got)
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
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	c.Passed = c.Mismatches == 0
	return c, nil
}

// getRetrying is cache.Get that waits out an open breaker (a Redis call
// slower than the cache's timeout on a loaded machine opens it), for up to
// demoQuiesceTimeout.
func getRetrying(ctx context.Context, c *cachelayer.Cache, key string, dst any) (bool, error) {
	deadline := time.Now().Add(demoQuiesceTimeout)
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
