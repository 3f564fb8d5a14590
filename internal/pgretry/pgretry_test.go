package pgretry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/pgretry"
)

func TestRetryable(t *testing.T) {
	t.Parallel()
	require.True(t, pgretry.Retryable(fmt.Errorf("read: %w", &pgconn.PgError{Code: "57P01"})), "admin_shutdown")
	require.True(t, pgretry.Retryable(&pgconn.PgError{Code: "57P03"}), "cannot_connect_now")
	require.False(t, pgretry.Retryable(&pgconn.PgError{Code: "23505"}), "a unique violation is an answer")
	require.False(t, pgretry.Retryable(errors.New("boom")))
	require.False(t, pgretry.Retryable(context.Canceled))
	require.Equal(t, "57P01", pgretry.Code(fmt.Errorf("x: %w", &pgconn.PgError{Code: "57P01"})))
	require.Empty(t, pgretry.Code(errors.New("boom")))
}

func TestReadRetriesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	calls := 0
	v, err := pgretry.Read(ctx, func(context.Context) (int, error) {
		calls++
		return 0, &pgconn.PgError{Code: "57P01"}
	})
	require.Error(t, err)
	require.Zero(t, v)
	require.Equal(t, 2, calls, "one retry, never more")

	calls = 0
	v, err = pgretry.Read(ctx, func(context.Context) (int, error) {
		calls++
		if calls == 1 {
			return 0, &pgconn.PgError{Code: "57P01"}
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
