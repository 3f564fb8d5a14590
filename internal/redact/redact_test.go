package redact_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

func TestURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:s3cret@h:5432/db":           "postgres://u:xxxxx@h:5432/db",
		"redis://:s3cret@h:6379/0":                "redis://:xxxxx@h:6379/0",
		"postgres://u:s3cret@h:99999999999/db":    "postgres://u:xxxxx@h:99999999999/db",
		"postgres://u:s3cret@[bad/db":             "postgres://u:xxxxx@[bad/db",
		"host=h user=u password=s3cret dbname=db": "host=h user=u password=xxxxx dbname=db",
		"postgres://h/db?password=s3cret":         "postgres://h/db?password=xxxxx",
		"redis://h:6379/0":                        "redis://h:6379/0",
	} {
		require.Equal(t, want, redact.URL(in), in)
	}
}

func TestErrorScrubsEverySpelling(t *testing.T) {
	t.Parallel()
	raw := "postgres://u:p%40ss%2Fw0rd@h:1/db"
	sentinel := errors.New("boom")
	err := fmt.Errorf("cannot parse %q (password p@ss/w0rd): %w", raw, sentinel)
	got := redact.Error(err, raw)
	require.NotContains(t, got.Error(), "p@ss/w0rd")
	require.NotContains(t, got.Error(), "p%40ss")
	require.ErrorIs(t, got, sentinel)
	require.Nil(t, errors.Unwrap(got), "the unredacted error is not reachable by Unwrap")
	w := redact.Wrap(raw, err, "connect %s", redact.URL(raw))
	require.True(t, strings.HasPrefix(w.Error(), "connect postgres://u:xxxxx@h:1/db: "))
	require.ErrorIs(t, w, sentinel)
}
