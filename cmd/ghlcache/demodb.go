package main

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

// defaultDemoDatabase is the database demo and bench create (once) and use
// on the server of --database-url, so that they never touch an application's
// tables.
const defaultDemoDatabase = "ghlcache_demo"

// demoDatabaseHelp documents --db-name for demo and bench.
const demoDatabaseHelp = "database to create (if missing), migrate and use on the server of --database-url; \"\" uses --database-url's own database"

// openDemoDatabase creates (if missing) the database name on the server of
// the configured URL, migrates it and returns its URL. configure may adjust
// the pool (a tracer).
func openDemoDatabase(ctx context.Context, e *env, name string, configure func(*pgxpool.Config)) (*pgxpool.Pool, string, error) {
	serverURL := e.databaseURL()
	if _, err := parsePoolConfig(serverURL); err != nil {
		return nil, "", err
	}
	dbURL, _, err := bench.EnsureDatabase(ctx, serverURL, name)
	if err != nil {
		return nil, "", redact.WithText(redact.String(err.Error(), serverURL), err)
	}
	cfg, err := parsePoolConfig(dbURL)
	if err != nil {
		return nil, "", err
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = postgresConnectTimeout
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, "", redact.Wrap(dbURL, err, "postgres %s", redact.URL(dbURL))
	}
	if err := db.Migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, "", redact.Wrap(dbURL, err, "migrate %s", redact.URL(dbURL))
	}
	return pool, dbURL, nil
}

// redisOptions parses the configured Redis URL into client options whose
// socket reads honour context deadlines. Commands that cannot work without
// Redis reject --no-cache here.
func redisOptions(e *env, command string) (*redis.Options, error) {
	switch why := e.noCache(); why {
	case "":
	case "--no-cache":
		return nil, usagef("ghlcache "+command, "needs Redis: drop --no-cache")
	default:
		return nil, usagef("ghlcache "+command, "needs Redis, but %s (no-cache mode): set it, or unset REDIS_URL for %s", why, defaultRedisURL)
	}
	raw := e.redisURL()
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return nil, invalidURL("redis", raw, err)
	}
	opts.ContextTimeoutEnabled = true
	return opts, nil
}
