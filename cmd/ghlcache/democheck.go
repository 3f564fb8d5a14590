package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
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

// check waits until every invalidation has reached Redis, then compares
// every cached balance and definition with Postgres (the bench's checker:
// bench.Drainer and bench.Compare). It tells a Redis it cannot reach
// (nothing to compare: Verified false) from a mismatch.
func (d *demo) check(ctx context.Context) demoConsistency {
	c := demoConsistency{Verified: true}
	unverified := func(err error) demoConsistency {
		c.Verified, c.Passed = false, false
		if errors.Is(err, bench.ErrRedisUnreachable) || errors.Is(err, cachelayer.ErrUnavailable) {
			c.Reason = bench.ErrRedisUnreachable.Error()
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
		drain := bench.Drainer{
			Outboxes: []bench.Outbox{
				{Sweep: d.credits.Sweep, Depth: func(ctx context.Context) (int64, error) {
					st, err := d.credits.OutboxStats(ctx)
					return st.Depth, err
				}},
				{Sweep: d.workflows.Sweep, Depth: func(ctx context.Context) (int64, error) {
					st, err := d.workflows.OutboxStats(ctx)
					return st.Depth, err
				}},
			},
			Timeout:          demoQuiesceTimeout,
			Healthy:          func(ctx context.Context) bool { return d.cache.Health(ctx).Healthy },
			UnreachableGrace: demoUnreachableGrace,
		}
		depth, err := drain.Drain(ctx)
		c.OutboxDepthAtCheck = depth
		if err != nil {
			return unverified(err)
		}
	}

	// One deadline for every Get that waits out an open breaker.
	deadline := time.Now().Add(demoQuiesceTimeout)
	balances, err := bench.Compare(ctx, d.opts.users*len(demoCreditTypes), func(ctx context.Context, i int) (int, []string, error) {
		u, t := d.firstUser+int64(i/len(demoCreditTypes)), demoCreditTypes[i%len(demoCreditTypes)]
		var got credits.Balance
		found, err := getRetrying(ctx, d.cache, credits.Key(u, t), &got, deadline)
		if err != nil || !found {
			return 0, nil, err
		}
		want, err := d.creditStore.Balance(ctx, u, t)
		if err != nil {
			return 0, nil, err
		}
		if got.Amount != want.Amount || got.Version != want.Version {
			return 1, []string{fmt.Sprintf("%s: cached %d (version %d), Postgres %d (version %d)",
				credits.Key(u, t), got.Amount, got.Version, want.Amount, want.Version)}, nil
		}
		return 1, nil, nil
	})
	if err != nil {
		return unverified(err)
	}
	defs, err := bench.Compare(ctx, len(d.defIDs), func(ctx context.Context, i int) (int, []string, error) {
		id := d.defIDs[i]
		var got workflows.Definition
		found, err := getRetrying(ctx, d.cache, workflows.Key(id), &got, deadline)
		if errors.Is(err, cachelayer.ErrNotFound) || (err == nil && !found) {
			return 0, nil, nil
		}
		if err != nil {
			return 0, nil, err
		}
		want, err := d.wfStore.Definition(ctx, id)
		if err != nil {
			return 0, nil, err
		}
		if got.Version != want.Version {
			return 1, []string{fmt.Sprintf("%s: cached version %d, Postgres version %d", workflows.Key(id), got.Version, want.Version)}, nil
		}
		return 1, nil, nil
	})
	if err != nil {
		return unverified(err)
	}
	c.BalancesChecked, c.BalancesCached, c.DefinitionsCached = balances.Keys, balances.Cached, defs.Cached
	balances.Add(defs)
	c.Mismatches, c.Examples = balances.Mismatches, balances.Examples
	c.Passed = c.Mismatches == 0
	return c
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
