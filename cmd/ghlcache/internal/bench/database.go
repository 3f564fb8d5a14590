package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

// EnsureDatabase creates the database name on the server of serverURL unless
// it exists, and returns the URL of that database (serverURL with its path
// replaced). created reports whether it was created now. An empty name
// means serverURL's own database, returned as is.
func EnsureDatabase(ctx context.Context, serverURL, name string) (dbURL string, created bool, err error) {
	if name == "" {
		return serverURL, false, nil
	}
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", false, fmt.Errorf("database URL %s: want postgres://host/db to create a database", redact.URL(serverURL))
	}
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", false, fmt.Errorf("connect to postgres %s: %w", redact.URL(serverURL), redact.Error(err, serverURL))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", false, fmt.Errorf("look up database %q: %w", name, err)
	}
	if !exists {
		_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42P04" {
			err = nil // created by a concurrent run meanwhile
		}
		if err != nil {
			return "", false, fmt.Errorf("create database %q: %w", name, err)
		}
		created = true
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), created, nil
}

// DatabaseName returns the database a postgres:// URL names ("" if none).
func DatabaseName(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(u.Path, "/")
}

// Querier is the part of a pgx pool or connection that SeedBalances needs.
type Querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// SeedBalances gives users fresh users (ids above every id in use) a
// balance of each type in one statement, with a ledger row each, as if each
// had received one Add, and returns the first new user id; the users are
// first … first+users-1. Amounts are between 1 000 and 100 000. Concurrent
// seeders of one database take turns (an advisory lock).
func SeedBalances(ctx context.Context, db Querier, users int, types []credits.Type) (first int64, err error) {
	if users < 1 || len(types) == 0 {
		return 0, errors.New("bench: seed needs at least one user and one type")
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(7239914)"); err != nil {
		return 0, fmt.Errorf("seed: %w", err)
	}
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(user_id), 0) + 1 FROM credit_balances").Scan(&first); err != nil {
		return 0, fmt.Errorf("seed: %w", err)
	}
	names := make([]string, len(types))
	for i, t := range types {
		names[i] = string(t)
	}
	const seed = `
WITH b AS (
    INSERT INTO credit_balances (user_id, credit_type, balance, version, updated_at)
    SELECT u, t, 1000 + (random() * 99000)::bigint, 1, now()
    FROM generate_series($1::bigint, $2::bigint) AS u, unnest($3::text[]) AS t
    RETURNING user_id, credit_type, balance
)
INSERT INTO credit_ledger (user_id, credit_type, delta, balance_after, version_after, reason)
SELECT user_id, credit_type, balance, balance, 1, 'seed' FROM b`
	if _, err := tx.Exec(ctx, seed, first, first+int64(users)-1, names); err != nil {
		return 0, fmt.Errorf("seed balances: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("seed balances: %w", err)
	}
	return first, nil
}

// Execer runs a statement.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Vacuum vacuums the tables the workloads write, as autovacuum would keep
// them in a deployment. The bench's database lives from run to run, and the
// invalidation outbox churns (every cached write inserts a row, marks it
// done and later deletes it): where autovacuum is off — as on this
// project's test machines — its dead rows pile up across runs and slow
// down the sweeper's and the marker's index scans, measured at up to a
// third of ghlcache's 95/5 throughput, which is no property of the cache.
func Vacuum(ctx context.Context, db Execer) error {
	if _, err := db.Exec(ctx, "VACUUM (ANALYZE) cache_outbox, credit_balances, credit_ledger, workflow_definitions"); err != nil {
		return fmt.Errorf("bench: vacuum: %w", err)
	}
	return nil
}
