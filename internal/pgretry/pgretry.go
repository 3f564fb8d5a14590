// Package pgretry holds the one retry rule the stores share: a read is
// retried once when Postgres certainly did not run it (nothing was sent) or
// terminated the connection (57P01 admin_shutdown, as after a restart).
// Writes are never retried here; the idempotency key is the caller's tool.
package pgretry

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// Read runs fn and, if it failed in a way that is safe to retry, runs it once
// more. ctx bounds both attempts.
func Read[T any](ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	v, err := fn(ctx)
	if err == nil || !Retryable(err) || ctx.Err() != nil {
		return v, err
	}
	return fn(ctx)
}

// Retryable reports whether err says a read never reached Postgres or its
// connection was terminated by the server.
func Retryable(err error) bool {
	if pgconn.SafeToRetry(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", "57P02", "57P03": // admin_shutdown, crash_shutdown, cannot_connect_now
			return true
		}
	}
	return false
}

// Code returns the SQLSTATE of err, or "" when it is not a Postgres error.
func Code(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
