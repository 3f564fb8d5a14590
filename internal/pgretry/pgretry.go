// Package pgretry holds the rules the stores share about what a failed
// statement did: a read is retried once when Postgres certainly did not run
// it (nothing was sent) or terminated the connection (57P01 admin_shutdown,
// as after a restart); a failed COMMIT is told apart from one whose outcome
// is unknown (CommitUnknown), also for a write that is one statement in
// autocommit (its own COMMIT). Writes are never retried here; the
// idempotency key is the caller's tool.
package pgretry

import (
	"context"
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
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
		case pgerrcode.AdminShutdown, pgerrcode.CrashShutdown, pgerrcode.CannotConnectNow:
			return true
		}
	}
	return false
}

// CommitUnknown reports whether err, returned by a transaction's Commit,
// leaves the outcome unknown: the COMMIT may have been applied although its
// reply never arrived (the connection dropped, the context ended while
// waiting, a FATAL error terminated the session, possibly after a local
// commit that was waiting for synchronous replication). It is false only
// when the transaction certainly did not commit: nothing was sent
// (pgconn.SafeToRetry), the server rejected the commit with an ERROR
// (serialization failure, deferred constraint), the transaction had already
// failed (pgx.ErrTxCommitRollback) or was closed (pgx.ErrTxClosed).
//
// pgconn.SafeToRetry alone is not enough: when the connection dies while
// pgconn waits for a reply, the error it returns is "conn closed"
// (pgconn.ErrConnClosed), which it also calls safe to retry although the
// COMMIT was sent. A store calls Commit only on a live connection (every
// earlier statement succeeded), so ErrConnClosed there means the reply was
// lost.
//
// The same holds for the error of a write that is a single statement in
// autocommit, which is its own COMMIT (the stores' writes are): a lost
// reply shows as an error that is not safe to retry ("unexpected EOF"), a
// rejected statement as an ERROR. ErrConnClosed there (pgxpool handed out a
// connection that had just been closed) is still taken as unknown: a
// spurious ErrCommitUnknown costs a repeat with the idempotency key and one
// extra invalidation, while a missed one could leave a committed change
// uninvalidated.
func CommitUnknown(err error) bool {
	switch {
	case err == nil, errors.Is(err, pgx.ErrTxCommitRollback), errors.Is(err, pgx.ErrTxClosed):
		return false
	case pgconn.SafeToRetry(err) && !errors.Is(err, pgconn.ErrConnClosed):
		return false // never sent: the context had ended, or the connection was busy
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		sev := pgErr.SeverityUnlocalized
		if sev == "" {
			sev = pgErr.Severity
		}
		return sev == "FATAL" || sev == "PANIC" // the session ended: an ERROR is a definite rollback
	}
	return true
}

// Code returns the SQLSTATE of err (compare it with the pgerrcode
// constants), or "" when it is not a Postgres error.
func Code(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
