package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

// postgresConnectTimeout bounds connecting to Postgres (and the first ping)
// when the URL sets no connect_timeout.
const postgresConnectTimeout = 5 * time.Second

// openPool parses rawURL, connects and pings, so that a wrong URL or a server
// that is down fails here with a clear, redacted message. Close the pool.
func openPool(ctx context.Context, rawURL string) (*pgxpool.Pool, error) {
	cfg, err := parsePoolConfig(rawURL)
	if err != nil {
		return nil, err
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = postgresConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, redact.Wrap(rawURL, err, "postgres %s", redact.URL(rawURL))
	}
	pingCtx, cancel := context.WithTimeout(ctx, cfg.ConnConfig.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, redact.Wrap(rawURL, err, "connect to postgres %s", redact.URL(rawURL))
	}
	return pool, nil
}

// parsePoolConfig parses rawURL. Its errors say what is wrong without
// quoting the URL's password (pgx's parse errors quote the URL).
func parsePoolConfig(rawURL string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, invalidURL("database", rawURL, err)
	}
	return cfg, nil
}

// invalidURL describes a URL that did not parse: the redacted URL (a
// placeholder if it does not parse cleanly) and the reason in words that
// never quote the input; the parser's own text (pgx and go-redis quote the
// input in it) is not repeated.
func invalidURL(what, rawURL string, err error) error {
	return redact.WithText(fmt.Sprintf("invalid %s URL %s: %s", what, redact.URL(rawURL), redact.Reason(rawURL, err)), err)
}
