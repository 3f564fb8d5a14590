package workflows

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/outbox"
)

// OutboxDomain is the cache_outbox.domain of workflow definition keys.
const OutboxDomain = "workflows"

// Cached is a [Repo] that serves definitions through a cachelayer.Cache (key
// [Key], TTL 300 s, "not found" cached 30 s) and sends every change to its
// [Store]. Invalidation works as in credits.Cached: the key is recorded in
// the outbox in the change's transaction, deleted after commit, and swept
// later if that delete failed. Save of a new definition also deletes its
// key, so a "not found" cached before it existed never hides it.
type Cached struct {
	store  *Store
	outbox *outbox.Outbox // records, sends and sweeps the invalidations of Save and Delete
	cache  *cachelayer.Cache
	opts   cachelayer.FetchOptions // TTL and NegativeTTL; SkipRedis is set per read
}

// CachedConfig configures a [Cached]. Zero fields take the defaults.
type CachedConfig struct {
	TTL           time.Duration // how long a definition stays cached, cachelayer.TTLMedium (300 s)
	NegativeTTL   time.Duration // how long "not found" stays cached, 30 s
	SweepInterval time.Duration // between outbox sweeps while the sweeper knows of work, 1 s
	SweepIdle     time.Duration // between outbox sweeps while it knows of none, 2 s: how late an idle instance finds rows another instance left
	SweepBatch    int           // outbox rows claimed per sweep transaction, 500
	Logger        *slog.Logger  // slog.Default()
	// NoNearCache keeps definitions out of the cache's near tier (see
	// cachelayer.NearConfig). By default they are in it: a definition read
	// again in this process costs no round trip, and another process's
	// change reaches it through Redis's tracking — about a millisecond on
	// one host, never more than NearConfig.MaxLag (5 ms) while it serves.
	// This process's own changes drop its copy before they return.
	NoNearCache bool
}

var _ Repo = (*Cached)(nil)

// NewCached wraps store with cache and starts the outbox sweeper; cfg nil
// means defaults. Close stops the sweeper (it does not close store or cache).
func NewCached(store *Store, c *cachelayer.Cache, cfg *CachedConfig) *Cached {
	cfg = cmp.Or(cfg, &CachedConfig{})
	if cfg.TTL < 0 || cfg.NegativeTTL < 0 {
		panic("workflows: negative CachedConfig duration")
	}
	opts := cachelayer.FetchOptions{
		TTL:         cmp.Or(cfg.TTL, cachelayer.TTLMedium),
		NegativeTTL: cmp.Or(cfg.NegativeTTL, 30*time.Second),
	}
	maxAge := max(opts.TTL, opts.NegativeTTL) + time.Minute // how long a cached entry or marker can outlive a lost delete
	c.SetDomain(keyPrefix, OutboxDomain)                    // names the domain of its metrics and spans
	if !cfg.NoNearCache {
		if err := c.EnableNear(keyPrefix); err != nil {
			cmp.Or(cfg.Logger, slog.Default()).Warn("workflows: definitions stay out of the near tier", "err", err)
		}
	}
	return &Cached{store: store, cache: c, opts: opts, outbox: outbox.New(store.pool, c, outbox.Config{
		Domain: OutboxDomain, Tables: []string{"workflow_definitions"}, Interval: cfg.SweepInterval, IdleInterval: cfg.SweepIdle, Batch: cfg.SweepBatch, MaxAge: maxAge, Logger: cfg.Logger,
		MeterProvider: c.MeterProvider(),
	})}
}

// Definition implements [Repo]: a read through the cache (a missing id is
// cached as "not found"), or from Postgres while this process's own
// invalidation of the key is pending (concurrent reads of one id share one
// load either way).
func (c *Cached) Definition(ctx context.Context, id int64) (Definition, error) {
	if err := validateID(id); err != nil {
		return Definition{}, err
	}
	key := Key(id)
	opts := c.opts
	// While this process's invalidation of the key is pending, Redis may
	// hold the old definition: read Postgres, still one shared load per key.
	opts.SkipRedis = c.outbox.SkipRedis(key)
	d, ok, err := cachelayer.FetchNear[Definition](c.cache, key, opts) // a near hit builds no loader
	if !ok {
		d, err = cachelayer.FetchWith(ctx, c.cache, key, opts, func(ctx context.Context) (Definition, error) {
			d, err := c.store.Definition(ctx, id)
			if errors.Is(err, ErrNotFound) {
				return d, fmt.Errorf("%w (%w)", err, cachelayer.ErrNotFound)
			}
			return d, err
		})
	}
	if errors.Is(err, cachelayer.ErrNotFound) {
		// The same error whether the load or a cached marker said so.
		return Definition{}, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	return d, err
}

// Save implements [Repo]; the definition's key is invalidated after commit.
func (c *Cached) Save(ctx context.Context, d Definition) (Definition, error) {
	out, inv, err := c.store.save(ctx, d, c.outbox)
	c.outbox.Invalidate(ctx, inv) // committed, or possibly (ErrCommitUnknown): invalidate as if it was
	if err != nil {
		return Definition{}, err
	}
	return out, nil
}

// Delete implements [Repo]; the definition's key is invalidated after commit.
func (c *Cached) Delete(ctx context.Context, id int64) error {
	inv, err := c.store.delete(ctx, id, c.outbox)
	c.outbox.Invalidate(ctx, inv) // as in Save
	return err
}

// OutboxStats describes the invalidation outbox of a cached repository.
type OutboxStats = outbox.Stats

// OutboxStats returns the outbox depth and oldest row age of workflow
// invalidations, and this process's sweeper counters.
func (c *Cached) OutboxStats(ctx context.Context) (OutboxStats, error) { return c.outbox.Stats(ctx) }

// Sweep runs one outbox sweep now (the sweeper also runs by itself, every
// SweepInterval while it knows of work, every SweepIdle otherwise): it
// deletes the keys of waiting rows and marks done those whose delete
// succeeded.
// While the cache cannot reach Redis at all (no-cache mode, closed) it
// deletes no key and claims no row (it drops only moot rows), leaving the
// rows to instances that can.
func (c *Cached) Sweep(ctx context.Context) error { return c.outbox.Sweep(ctx) }

// Close stops the outbox sweeper and waits for a sweep in progress. It is
// idempotent and closes neither the store nor the cache.
func (c *Cached) Close() error { return c.outbox.Close() }
