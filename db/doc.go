// Package db holds the Postgres schema of ghlcache as embedded goose
// migrations, [Migrate] to apply them, and the sqlc-generated pgx/v5 queries
// (queries.go, models.go, *.sql.go; generated from ../queries, do not edit).
//
// Only the stores in package credits and workflows use the generated code;
// everything else talks to them through their domain types.
package db
