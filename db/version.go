package db

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// LatestVersion returns the version of the newest embedded migration: the
// schema version this build needs.
func LatestVersion() int64 {
	names, err := fs.Glob(Migrations(), "*.sql")
	if err != nil {
		panic(err) // a constant, valid pattern
	}
	var latest int64
	for _, name := range names {
		digits, _, _ := strings.Cut(name, "_")
		if v, err := strconv.ParseInt(digits, 10, 64); err == nil {
			latest = max(latest, v)
		}
	}
	return latest
}

// undefinedTable is SQLSTATE 42P01.
const undefinedTable = "42P01"

// AppliedVersion returns the schema version applied to the database of
// pool, as "ghlcache migrate version" prints it: 0 when no migration was
// ever applied (goose's version table is missing). One query.
func AppliedVersion(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var v int64
	err := pool.QueryRow(ctx, "SELECT coalesce(max(version_id), 0) FROM goose_db_version").Scan(&v)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == undefinedTable {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return v, nil
}
