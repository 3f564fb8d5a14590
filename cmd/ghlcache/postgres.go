package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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
		return nil, wrapURL(rawURL, err, "postgres %s", redactURL(rawURL))
	}
	pingCtx, cancel := context.WithTimeout(ctx, cfg.ConnConfig.ConnectTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, wrapURL(rawURL, err, "connect to postgres %s", redactURL(rawURL))
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

// pgxQuotedURL matches the URL that pgx quotes in its parse errors.
var pgxQuotedURL = regexp.MustCompile("^cannot parse `[^`]*`: ")

// invalidURL describes a URL that did not parse: the redacted URL and the
// reason, without the URL the library quoted in its error.
func invalidURL(what, rawURL string, err error) error {
	reason := err.Error()
	if ue, ok := errors.AsType[*url.Error](err); ok {
		reason = ue.Err.Error()
	} else if _, ok := errors.AsType[*pgconn.ParseConfigError](err); ok {
		reason = pgxQuotedURL.ReplaceAllString(reason, "")
	}
	return redact.WithText(scrub(fmt.Sprintf("invalid %s URL %s: %s", what, redactURL(rawURL), reason), rawURL), err)
}
