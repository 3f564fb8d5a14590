// Package ghlcache wires the cached repositories of user credit balances and
// workflow definitions for a service: one [Open] with a Postgres and a Redis
// URL returns both, ready to use, and one Close releases everything.
//
// The packages underneath can be used on their own: cachelayer (the generic
// cache-aside engine), credits and workflows (domain types, Postgres stores,
// cached decorators) and db (migrations).
package ghlcache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/redact"
	"github.com/ghl-agency/ghlcache/workflows"
)

// Config configures [Open]. Only DatabaseURL is required.
type Config struct {
	DatabaseURL string // postgres://…; production wants sslmode=verify-full
	RedisURL    string // redis:// or rediss://; "" means no-cache mode (every read goes to Postgres)
	MaxConns    int32  // Postgres pool size; 0 keeps pgx's default (max(4, NumCPU))
	Migrate     bool   // apply the embedded migrations before returning; false: Open checks the schema is there (ErrSchemaMissing)

	// ConfigurePool, if set, may adjust the parsed pool configuration (a
	// tracer, connection lifetimes, …) before the pool is created.
	ConfigurePool func(*pgxpool.Config)

	Cache     *cachelayer.Config      // nil: defaults (prefix "ghl:", 100 ms per Redis call, …)
	Credits   *credits.CachedConfig   // nil: defaults (TTL 60 s)
	Workflows *workflows.CachedConfig // nil: defaults (TTL 300 s, not-found 30 s)
	Logger    *slog.Logger            // slog.Default()

	// MeterProvider and TracerProvider, if set, receive the cache's and
	// the outboxes' metrics and the cache's spans (see cachelayer.Config:
	// they are used where Cache sets none). nil: no telemetry, at no cost.
	// The library uses the OpenTelemetry API only; the SDK and exporters
	// are the service's.
	MeterProvider  metric.MeterProvider
	TracerProvider trace.TracerProvider

	// ConfigureRedis, if set, is called with the Redis client Open built
	// (not in no-cache mode), before the repositories use it: the place for
	// go-redis hooks such as redisotel.InstrumentTracing and
	// redisotel.InstrumentMetrics. Open's own connection check comes before
	// it. An error fails Open. For Postgres, see ConfigurePool (a pgx
	// tracer such as otelpgx's).
	ConfigureRedis func(redis.UniversalClient) error
}

// ErrSchemaMissing is returned by [Open], when Config.Migrate is false, for
// a database without the schema this build needs (never migrated, or at an
// older version): set Config.Migrate or run "ghlcache migrate up".
var ErrSchemaMissing = errors.New("ghlcache: database schema missing or out of date: set Config.Migrate or run ghlcache migrate up")

// checkSchema returns ErrSchemaMissing, with the versions, unless the
// database of pool is at the schema version this build needs or a later
// one (a newer release may have migrated it first). One query.
func checkSchema(ctx context.Context, pool *pgxpool.Pool, rawURL string) error {
	applied, err := db.AppliedVersion(ctx, pool)
	if err != nil {
		return fmt.Errorf("ghlcache: %s: %w", redact.URL(rawURL), redact.Error(err, rawURL))
	}
	if latest := db.LatestVersion(); applied < latest {
		return fmt.Errorf("%w (%s is at schema version %d, this build needs %d)", ErrSchemaMissing, redact.URL(rawURL), applied, latest)
	}
	return nil
}

// Repos holds the cached repositories and what they run on. Credits and
// Workflows are safe for concurrent use; Pool and Cache are there for
// advanced use (health checks, metrics) and are closed by Close.
type Repos struct {
	Credits   *credits.Cached
	Workflows *workflows.Cached
	Pool      *pgxpool.Pool
	Cache     *cachelayer.Cache

	dbURL string // to redact Health's Postgres errors
}

// Open connects to Postgres (checked with a ping) and Redis, and returns both
// cached repositories. Redis being down is not an error: the cache falls
// back to Postgres and recovers by itself. With Config.Migrate false, a
// database without the schema this build needs is [ErrSchemaMissing]
// (checked once, with one query). Errors never contain a password.
func Open(ctx context.Context, cfg Config) (*Repos, error) {
	if cfg.DatabaseURL == "" {
		return nil, errors.New("ghlcache: Config.DatabaseURL is empty")
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("ghlcache: invalid database url %s: %s", redact.URL(cfg.DatabaseURL), redact.Reason(cfg.DatabaseURL, err))
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	}
	if cfg.ConfigurePool != nil {
		cfg.ConfigurePool(pcfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("ghlcache: connect %s: %w", redact.URL(cfg.DatabaseURL), redact.Error(err, cfg.DatabaseURL))
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = pool.Ping(pctx)
	cancel()
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("ghlcache: ping %s: %w", redact.URL(cfg.DatabaseURL), redact.Error(err, cfg.DatabaseURL))
	}
	if cfg.Migrate {
		if err := db.Migrate(ctx, pool); err != nil {
			pool.Close()
			return nil, fmt.Errorf("ghlcache: %w", err)
		}
	} else if err := checkSchema(ctx, pool, cfg.DatabaseURL); err != nil {
		pool.Close()
		return nil, err
	}
	// Copies of the caller's configs (nil: defaults), with Config.Logger
	// where they set none.
	var ccfg cachelayer.Config
	if cfg.Cache != nil {
		ccfg = *cfg.Cache
	}
	ccfg.Logger = cmp.Or(ccfg.Logger, cfg.Logger)
	if ccfg.MeterProvider == nil {
		ccfg.MeterProvider = cfg.MeterProvider
	}
	if ccfg.TracerProvider == nil {
		ccfg.TracerProvider = cfg.TracerProvider
	}
	cache, err := cachelayer.Open(ctx, cfg.RedisURL, &ccfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("ghlcache: %w", err)
	}
	if rdb := cache.Client(); rdb != nil && cfg.ConfigureRedis != nil {
		if err := cfg.ConfigureRedis(rdb); err != nil {
			_ = cache.Close()
			pool.Close()
			return nil, fmt.Errorf("ghlcache: Config.ConfigureRedis: %w", err)
		}
	}
	var crCfg credits.CachedConfig
	if cfg.Credits != nil {
		crCfg = *cfg.Credits
	}
	crCfg.Logger = cmp.Or(crCfg.Logger, cfg.Logger)
	var wfCfg workflows.CachedConfig
	if cfg.Workflows != nil {
		wfCfg = *cfg.Workflows
	}
	wfCfg.Logger = cmp.Or(wfCfg.Logger, cfg.Logger)
	return &Repos{
		Credits:   credits.NewCached(credits.NewStore(pool), cache, &crCfg),
		Workflows: workflows.NewCached(workflows.NewStore(pool), cache, &wfCfg),
		Pool:      pool,
		Cache:     cache,
		dbURL:     cfg.DatabaseURL,
	}, nil
}

// Close stops the repositories' outbox sweepers, then closes the cache and
// the pool. Outbox rows left behind are swept by any other instance. It is
// safe to call more than once.
func (r *Repos) Close() error {
	err := errors.Join(r.Credits.Close(), r.Workflows.Close(), r.Cache.Close())
	r.Pool.Close()
	return err
}
