package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// secretParts are the passwords of malformedURLs and the pieces of them a
// parser that splits an ambiguous URL elsewhere may echo.
var secretParts = []string{"Secret1", "Secret2", "ret1", "ret2", "Sec ret2"}

// TestMalformedURLsNeverPrinted runs every command that takes a URL with
// the malformed shapes of issue 8 (and more): nothing it prints or returns
// may contain a password or a piece of one. Nothing here reaches a server
// (closed ports, roles that do not exist, names no resolver is asked for).
func TestMalformedURLsNeverPrinted(t *testing.T) {
	t.Parallel()
	dbURL, redisURL := testsvc.DatabaseURL(t), testsvc.RedisURL(t)
	redisInputs := []struct {
		url       string
		parseable bool // go-redis accepts it, so bench would run: leave bench out
	}{
		{"redis//:Secret1@127.0.0.1:1", false},
		{"redis:/:Secret1@127.0.0.1:1", false},
		{"redis://:Secret1@127.0.0.1:port/0", false},
		{"redis://:Secret1@[::1/0", false},
		{"redis://:Secret1@127.0.0.1:1/zz", false},
		{"http://:Secret1@127.0.0.1:1/0", false},
		{"redis://:Sec@ret1@127.0.0.1:1/0", true},
		{"redis://Secret1@127.0.0.1:1/0", true},
	}
	databaseInputs := []string{
		"postgres//alice:Secret2@127.0.0.1:5432/postgres",
		"postgres:/alice:Secret2@127.0.0.1:5432/postgres",
		"postgres://alice:Sec@ret2@127.0.0.1:5432/postgres",
		"postgres://alice:Secret2@127.0.0.1:port/postgres",
		"postgres://alice@127.0.0.1:5432/postgres?password=Secret2&sslmode=disable",
		"host=127.0.0.1 user=alice password = Secret2 sslmode=disable",
		"host=127.0.0.1 user=alice password='Sec ret2' sslmode=disable",
		"alice:Secret2@127.0.0.1:5432/postgres",
	}
	var runs [][]string
	for _, in := range redisInputs {
		runs = append(runs,
			[]string{"health", "--database-url", dbURL, "--redis-url", in.url},
			[]string{"cache", "stats", "--redis-url", in.url},
			[]string{"demo", "--database-url", dbURL, "--redis-url", in.url})
		if !in.parseable {
			runs = append(runs, []string{"bench", "--database-url", dbURL, "--db-name", "", "--redis-url", in.url})
		}
	}
	for _, in := range databaseInputs {
		runs = append(runs,
			[]string{"health", "--no-cache", "--database-url", in},
			[]string{"migrate", "status", "--database-url", in},
			[]string{"demo", "--no-cache", "--database-url", in},
			[]string{"bench", "--database-url", in, "--redis-url", redisURL})
	}
	for _, args := range runs {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			r := cli(t, args...)
			require.Error(t, r.err)
			require.NotZero(t, r.code)
			for _, s := range []string{r.stdout, r.stderr, r.err.Error()} {
				for _, p := range secretParts {
					require.NotContains(t, s, p)
				}
			}
		})
	}
}
