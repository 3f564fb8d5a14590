package pgretry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/pgretry"
)

func TestRetryable(t *testing.T) {
	t.Parallel()
	require.True(t, pgretry.Retryable(fmt.Errorf("read: %w", &pgconn.PgError{Code: pgerrcode.AdminShutdown})), "admin_shutdown")
	require.True(t, pgretry.Retryable(&pgconn.PgError{Code: pgerrcode.CannotConnectNow}), "cannot_connect_now")
	require.False(t, pgretry.Retryable(&pgconn.PgError{Code: "23505"}), "a unique violation is an answer")
	require.False(t, pgretry.Retryable(errors.New("boom")))
	require.False(t, pgretry.Retryable(context.Canceled))
	require.Equal(t, pgerrcode.AdminShutdown, pgretry.Code(fmt.Errorf("x: %w", &pgconn.PgError{Code: pgerrcode.AdminShutdown})))
	require.Empty(t, pgretry.Code(errors.New("boom")))
}

// notSent is an error that says nothing was sent, as pgconn's own do.
type notSent struct{}

func (notSent) Error() string     { return "conn busy" }
func (notSent) SafeToRetry() bool { return true }

// connClosed is the error pgconn returns when the connection died while it
// waited for a reply: safe to retry by its word, though the request was sent.
type connClosed struct{}

func (connClosed) Error() string     { return "conn closed" }
func (connClosed) SafeToRetry() bool { return true }
func (connClosed) Unwrap() error     { return pgconn.ErrConnClosed }

func TestCommitUnknown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		err     error
		unknown bool
	}{
		{"no error", nil, false},
		{"serialization failure at commit", fmt.Errorf("commit: %w", &pgconn.PgError{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "40001"}), false},
		{"deferred unique violation", &pgconn.PgError{Severity: "ERROR", Code: "23505"}, false},
		{"aborted transaction", pgx.ErrTxCommitRollback, false},
		{"closed transaction", pgx.ErrTxClosed, false},
		{"never sent", fmt.Errorf("commit: %w", notSent{}), false},
		{"terminated while waiting for sync replication", &pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: pgerrcode.AdminShutdown}, true},
		{"connection dropped before the reply", fmt.Errorf("commit: %w", io.ErrUnexpectedEOF), true},
		{"connection dropped while pgconn waited for the reply", fmt.Errorf("commit: %w", connClosed{}), true},
		{"context ended while waiting for the reply", context.DeadlineExceeded, true},
	} {
		require.Equal(t, tc.unknown, pgretry.CommitUnknown(tc.err), tc.name)
	}
}

func TestReadRetriesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	calls := 0
	v, err := pgretry.Read(ctx, func(context.Context) (int, error) {
		calls++
		return 0, &pgconn.PgError{Code: pgerrcode.AdminShutdown}
	})
	require.Error(t, err)
	require.Zero(t, v)
	require.Equal(t, 2, calls, "one retry, never more")

	calls = 0
	v, err = pgretry.Read(ctx, func(context.Context) (int, error) {
		calls++
		if calls == 1 {
			return 0, &pgconn.PgError{Code: pgerrcode.AdminShutdown}
		}
		return 7, nil
	})
	require.NoError(t, err)
	require.Equal(t, 7, v)

	calls = 0
	_, err = pgretry.Read(ctx, func(context.Context) (int, error) {
		calls++
		return 0, &pgconn.PgError{Code: "42P01"}
	})
	require.Error(t, err)
	require.Equal(t, 1, calls, "errors that are answers are not retried")
}
