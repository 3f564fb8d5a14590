package credits

import (
	"cmp"
	"context"
	"log/slog"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/outbox"
)

// OutboxDomain is the cache_outbox.domain of credit balance keys.
const OutboxDomain = "credits"

// CachedConfig configures a [Cached]. Zero fields take the defaults.
type CachedConfig struct {
	TTL           time.Duration // how long a balance stays cached, cachelayer.TTLShort (60 s)
	SweepInterval time.Duration // between outbox sweeps while the sweeper knows of work, 1 s
	SweepIdle     time.Duration // between outbox sweeps while it knows of none, 2 s: how late an idle instance finds rows another instance left
	SweepBatch    int           // outbox rows claimed per sweep transaction, 500
	Logger        *slog.Logger  // slog.Default()
	// NearCache puts balances in the cache's near tier (see
	// cachelayer.NearConfig). Off by default: then no process serves a
	// balance older than the last invalidation Redis completed. With it, a
	// balance read again in this process costs no round trip, and another
	// process's change reaches this one through Redis's tracking — about a
	// millisecond on one host, never more than NearConfig.MaxLag (5 ms)
	// while the tier serves. Money is still decided in Postgres only: a
	// Deduct never trusts a cached balance.
	NearCache bool
	// WriteThrough makes the invalidation after a committed change store
	// the new balance where Redis holds an older version of it
	// (cachelayer.ReplaceFull: one script instead of UNLINK), so the next
	// read in every process is a hit instead of a miss and a load; any
	// other entry (none, a lease, a newer version) is deleted as without
	// it. Off by default: DESIGN rule 4 deletes the key. The freshness
	// guarantees are the same either way (versions grow in commit order; a
	// late replace never overwrites a newer balance nor refills an emptied
	// key).
	WriteThrough bool
}

// Cached is a [Repo] that serves balances through a cachelayer.Cache (key
// [Key], TTL 60 s) and sends every change to its [Store].
//
// A change records the balance's cache key in the outbox in its own
// transaction; after commit Cached deletes the key (which also voids any
// in-flight fill of the old value) and marks the row done (batched). If that
// delete fails, the row keeps waiting and this process reads the key from
// Postgres until a sweep (its own or another instance's) has deleted it; the
// sweeper runs every SweepInterval while it knows of such work (every
// SweepIdle otherwise). Done rows are kept for the TTL + 1 min, so that
// after a Redis failover their keys are deleted again. Writes succeed
// whether or not Redis is reachable.
type Cached struct {
	store  *Store
	cache  *cachelayer.Cache
	ttl    time.Duration
	outbox *outbox.Outbox

	writeThrough bool
}

var _ Repo = (*Cached)(nil)

// NewCached wraps store with cache and starts the outbox sweeper; cfg nil
// means defaults. Close stops the sweeper (it does not close store or cache).
func NewCached(store *Store, c *cachelayer.Cache, cfg *CachedConfig) *Cached {
	cfg = cmp.Or(cfg, &CachedConfig{})
	if cfg.TTL < 0 {
		panic("credits: negative CachedConfig.TTL")
	}
	ttl := cmp.Or(cfg.TTL, cachelayer.TTLShort)
	c.SetDomain(keyPrefix, OutboxDomain) // names the domain of its metrics and spans
	if cfg.NearCache {
		if err := c.EnableNear(keyPrefix); err != nil {
			cmp.Or(cfg.Logger, slog.Default()).Warn("credits: balances stay out of the near tier", "err", err)
		}
	}
	ob := outbox.New(store.pool, c, outbox.Config{
		Domain: OutboxDomain, Tables: []string{"credit_balances"}, Interval: cfg.SweepInterval, IdleInterval: cfg.SweepIdle, Batch: cfg.SweepBatch, MaxAge: ttl + time.Minute, Logger: cfg.Logger,
		MeterProvider: c.MeterProvider(),
	})
	return &Cached{store: store, cache: c, ttl: ttl, outbox: ob, writeThrough: cfg.WriteThrough}
}

// Balance implements [Repo]: a read through the cache, or from Postgres while
// this process's own invalidation of the key is pending (concurrent reads of
// one key share one load either way).
func (c *Cached) Balance(ctx context.Context, userID int64, t Type) (Balance, error) {
	if err := validateOwner(userID, t); err != nil {
		return Balance{}, err
	}
	key := Key(userID, t)
	opts := cachelayer.FetchOptions{TTL: c.ttl}
	// While this process's invalidation of the key is pending, Redis may
	// hold the old balance: read Postgres, still one shared load per key.
	opts.SkipRedis = c.outbox.SkipRedis(key)
	if b, ok, err := cachelayer.FetchNear[Balance](c.cache, key, opts); ok { // a near hit builds no loader
		return b, err
	}
	return cachelayer.FetchWith(ctx, c.cache, key, opts, func(ctx context.Context) (Balance, error) {
		return c.store.Balance(ctx, userID, t)
	})
}

// Add implements [Repo]; the cached balance is invalidated after commit.
func (c *Cached) Add(ctx context.Context, ch Change) (Balance, error) {
	return c.change(ctx, ch, +1)
}

// Deduct implements [Repo]; the decision is Postgres's alone (never from a
// cached balance), and the cached balance is invalidated after commit.
func (c *Cached) Deduct(ctx context.Context, ch Change) (Balance, error) {
	return c.change(ctx, ch, -1)
}

func (c *Cached) change(ctx context.Context, ch Change, sign int64) (Balance, error) {
	b, inv, err := c.store.change(ctx, ch, sign, c.outbox)
	// Committed, or possibly committed (ErrCommitUnknown): invalidate as if
	// it was. If it was not, the row does not exist and the pending mark
	// clears at the next sweep.
	if c.writeThrough && err == nil {
		c.outbox.InvalidateWith(ctx, inv, func(ctx context.Context, full string) error {
			return cachelayer.ReplaceFull(ctx, c.cache, full, b, c.ttl)
		})
	} else {
		c.outbox.Invalidate(ctx, inv)
	}
	if err != nil {
		return Balance{}, err
	}
	if inv == (outbox.Invalidation{}) {
		// An idempotent replay: the first attempt owns the invalidation,
		// which may still be on its way; one more delete costs little.
		_ = c.cache.Delete(context.WithoutCancel(ctx), Key(ch.UserID, ch.Type))
	}
	return b, nil
}

// History implements [Repo]; it is not cached.
func (c *Cached) History(ctx context.Context, userID int64, t Type, limit int) ([]Entry, error) {
	return c.store.History(ctx, userID, t, limit)
}

// Sweep runs one outbox sweep now (the sweeper also runs by itself, every
// SweepInterval while it knows of work, every SweepIdle otherwise): it
// deletes the keys of waiting rows and marks done those whose delete
// succeeded.
// While the cache cannot reach Redis at all (no-cache mode, closed) it
// deletes no key and claims no row (it drops only moot rows), leaving the
// rows to instances that can.
func (c *Cached) Sweep(ctx context.Context) error { return c.outbox.Sweep(ctx) }

// OutboxStats describes the invalidation outbox of a cached repository.
type OutboxStats = outbox.Stats

// OutboxStats returns the outbox depth and oldest row age of credit
// invalidations, and this process's sweeper counters.
func (c *Cached) OutboxStats(ctx context.Context) (OutboxStats, error) { return c.outbox.Stats(ctx) }

// Close stops the outbox sweeper and waits for a sweep in progress. It is
// idempotent and closes neither the store nor the cache.
func (c *Cached) Close() error { return c.outbox.Close() }
