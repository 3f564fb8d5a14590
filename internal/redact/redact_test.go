package redact_test

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

func TestURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:s3cret@h:5432/db":                       "postgres://u:xxxxx@h:5432/db",
		"postgres://u:s3cret@h:5432/db?sslmode=disable":       "postgres://u:xxxxx@h:5432/db?sslmode=disable",
		"postgres://postgres@127.0.0.1:5432/postgres":         "postgres://postgres@127.0.0.1:5432/postgres",
		"redis://:s3cret@h:6379/0":                            "redis://:xxxxx@h:6379/0",
		"redis://s3cret@h:6379/0":                             "redis://xxxxx@h:6379/0", // ioredis reads it as the password
		"rediss://default:s3cret@h:6379/0?dial_timeout=1s":    "rediss://default:xxxxx@h:6379/0?dial_timeout=1s",
		"postgres://u:s3cret@h:99999999999/db":                "postgres://u:xxxxx@h:99999999999/db",
		"postgres://u:p%40ss@h1:5432,h2:5433/db":              "postgres://u:xxxxx@h1:5432,h2:5433/db",
		"postgres://u@[::1]:5432/db":                          "postgres://u@[::1]:5432/db",
		"postgres://h/db?password=s3cret&sslmode=verify-full": "postgres://h/db?sslmode=verify-full",
		"postgres://h/db?application_name=s3cret":             "postgres://h/db",
		"redis://h:6379/0":                                    "redis://h:6379/0",
		"":                                                    "",
		"postgres://u:s3cret@[bad/db":                         redact.Unparseable,
		"postgres://u:s3cret@h:port/db":                       redact.Unparseable,
		"redis//:s3cret@h:6379":                               redact.Unparseable,
		"redis:/:s3cret@h:6379":                               redact.Unparseable,
		"postgres://u:s3@cret@h/db":                           redact.Ambiguous,
		"postgres://u:s3/cret@h/db":                           redact.Ambiguous,
		"postgres://h/db?x=a@b":                               redact.Ambiguous,
		"host=h user=u password=s3cret dbname=db":             redact.KeyValue,
		"host=h user=u password = s3cret":                     redact.KeyValue,
	} {
		require.Equal(t, want, redact.URL(in), in)
	}
}

// TestMalformedNeverLeak hands every shape of bad input the issue found (and
// more) to the parsers the module uses, and checks that neither URL, nor
// Reason, nor String on the parsers' errors and on a message quoting the
// input, contains the password or a piece of it.
func TestMalformedNeverLeak(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw   string
		parts []string // must never appear; the secret is "Secret1", "Secret2" or "Sec@ret2"'s pieces
	}{
		{"redis//:Secret1@127.0.0.1:7401", nil},
		{"redis:/:Secret1@127.0.0.1:7401", nil},
		{"redis:Secret1@127.0.0.1:7401", nil},
		{"redis::Secret1@127.0.0.1:7401", nil},
		{"redis://Secret1@127.0.0.1:7401/0", nil},
		{"Secret1@127.0.0.1:6379", nil},
		{"redis://:Secret1@127.0.0.1:port/0", nil},
		{"redis://:Secret1@[::1/0", nil},
		{"redis://:Secret1@127.0.0.1:6379/zz", nil},
		{"redis://:Secret1@127.0.0.1:6379/0?bogus=1", nil},
		{"redis://:Secret1@127.0.0.1:6379/0?dial_timeout=soon", nil},
		{"http://u:Secret1@127.0.0.1:6379/0", nil},
		{"redis://:Se cret1@127.0.0.1/0", []string{"Se cret1", "cret1"}},
		{"redis://:Secret1/x@127.0.0.1/0", nil},
		{"redis://:Secret1#x@127.0.0.1/0", nil},
		{"redis://:Secret1?x@127.0.0.1/0", nil},
		{"redis://:Sec@ret1@127.0.0.1:7401", []string{"Sec@ret1", "ret1@"}},
		{"redis://:Sec%ret1@127.0.0.1/0", []string{"Sec%ret1", "ret1"}},
		{"postgres//alice:Secret2@127.0.0.1:5432/db", nil},
		{"postgres:/alice:Secret2@127.0.0.1/db", nil},
		{"postgresql:alice:Secret2@127.0.0.1/db", nil},
		{"alice:Secret2@127.0.0.1:5432/db", nil},
		{"postgres://alice:Sec@ret2@127.0.0.1:5432/db", []string{"Sec@ret2", "ret2"}},
		{"postgres://alice:Sec@ret2@127.0.0.1:port/db", []string{"Sec@ret2", "ret2"}},
		{"postgres://alice:Secret2@127.0.0.1:port/db", nil},
		{"postgres://alice:Secret2@h1:5432,h2:port/db", nil},
		{"postgres://alice:Secret2@127.0.0.1/db?sslmode=bogus", nil},
		{"postgres://al ice:Secret2@127.0.0.1/db", nil},
		{"postgres://alice@127.0.0.1/db?password=Secret2", nil},
		{"postgres://alice@127.0.0.1/db?sslpassword=Secret2&sslmode=require", nil},
		{"postgres://alice:Sec%40ret2@127.0.0.1/db", []string{"Sec@ret2", "Sec%40ret2"}},
		{"host=127.0.0.1 user=alice password = Secret2", nil},
		{"host=127.0.0.1 user=alice password='Sec ret2'", []string{"Sec ret2"}},
		{`host=127.0.0.1 user=alice password='Sec\'ret2'`, []string{`Sec\'ret2`, "Sec'ret2"}},
		{"host=127.0.0.1 password=Secret2 port=x", nil},
		{"user=alice password=Secret2 sslmode=bogus", nil},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			t.Parallel()
			parts := tc.parts
			if parts == nil {
				parts = []string{"Secret1", "Secret2"}
			}
			var errs []error
			if _, err := url.Parse(tc.raw); err != nil {
				errs = append(errs, err)
			}
			if _, err := redis.ParseURL(tc.raw); err != nil {
				errs = append(errs, err)
			}
			if _, err := pgconn.ParseConfig(tc.raw); err != nil {
				errs = append(errs, err)
			}
			// What a connect error may quote: the input, and the host of a
			// parser that ends the userinfo at the first '@' (pgx, libpq).
			_, afterFirstAt, _ := strings.Cut(tc.raw, "@")
			errs = append(errs, fmt.Errorf("connect %s: %q: lookup %s: no such host", tc.raw, tc.raw, afterFirstAt))

			shown := []string{redact.URL(tc.raw)}
			for _, err := range errs {
				shown = append(shown, redact.Reason(tc.raw, err), redact.String(err.Error(), tc.raw),
					redact.Error(err, tc.raw).Error(), redact.Wrap(tc.raw, err, "open %s", redact.URL(tc.raw)).Error())
			}
			for _, s := range shown {
				for _, p := range parts {
					require.NotContains(t, s, p)
				}
			}
		})
	}
}

func TestReason(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw  string
		err  func(string) error
		want string
	}{
		{"redis://:Secret1@127.0.0.1:port/0", parseRedis, "invalid port"},
		{"redis://:Secret1@127.0.0.1:6379/zz", parseRedis, "invalid database number"},
		{"http://:Secret1@127.0.0.1:6379/0", parseRedis, "unsupported scheme"},
		{"redis//:Secret1@127.0.0.1:7401", parseRedis, "unsupported scheme"},
		{"redis://:Sec@ret1@127.0.0.1:7401", parseRedis, "unescaped '@' (write it as %40)"},
		{"postgres//alice:Secret2@127.0.0.1/db", parsePostgres, "neither a URL nor key/value settings"},
		{"postgres://alice:Secret2@127.0.0.1:port/db", parsePostgres, "invalid port"},
		{"bogus", func(string) error { return nil }, "not a URL of the form scheme://host"},
	} {
		require.Equal(t, tc.want, redact.Reason(tc.raw, tc.err(tc.raw)), tc.raw)
	}
}

func parseRedis(raw string) error    { _, err := redis.ParseURL(raw); return err }
func parsePostgres(raw string) error { _, err := pgconn.ParseConfig(raw); return err }

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
	require.True(t, strings.HasPrefix(w.Error(), "connect postgres://u:xxxxx@h:1/db: "), w.Error())
	require.ErrorIs(t, w, sentinel)
}

func TestMessage(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"dial redis://:Secret1@h:1/0 failed":    "dial redis://xxxxx@h:1/0 failed",
		"dial redis://Secret1@h:1/0 failed":     "dial redis://xxxxx@h:1/0 failed",
		"dial redis://:Sec@ret1@h:1/0 failed":   "dial redis://xxxxx@h:1/0 failed",
		"addr u:Secret1@h:1":                    "addr xxxxx@h:1",
		"conn host=h password = Secret1 user=u": "conn host=h password =xxxxx user=u",
		"conn host=h password='Sec ret1'":       "conn host=h password=xxxxx",
		"failed to dial after 1 attempts: dial tcp 127.0.0.1:1: connect: connection refused": "failed to dial after 1 attempts: dial tcp 127.0.0.1:1: connect: connection refused",
	} {
		require.Equal(t, want, redact.Message(in), in)
	}
}
