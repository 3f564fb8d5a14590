package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// cliEnv is cli with the environment variables vars (and no others).
func cliEnv(t *testing.T, vars map[string]string, args ...string) result {
	t.Helper()
	return cliWith(t, &env{lookupEnv: func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}}, args...)
}

// TestEmptyRedisURLIsNoCacheMode: as in the library, REDIS_URL set but
// empty means no-cache mode; unset, the default server.
func TestEmptyRedisURLIsNoCacheMode(t *testing.T) {
	t.Parallel()
	dbURL := testsvc.DatabaseURL(t)
	empty := map[string]string{"REDIS_URL": "", "DATABASE_URL": dbURL}

	r := cliEnv(t, empty, "health")
	require.NoError(t, r.err, "stdout: %s", r.stdout)
	require.Regexp(t, `(?m)^redis\s+disabled \(REDIS_URL is empty: no-cache mode\)`, r.stdout)
	require.NotContains(t, r.stdout, "127.0.0.1:6379", "the default server is not checked")

	r = cliEnv(t, map[string]string{"DATABASE_URL": dbURL}, "health", "--redis-url", "")
	require.NoError(t, r.err)
	require.Regexp(t, `(?m)^redis\s+disabled \(--redis-url is empty: no-cache mode\)`, r.stdout)

	// A flag still overrides the environment.
	r = cliEnv(t, empty, "health", "--redis-url", "redis://127.0.0.1:1/0")
	require.Error(t, r.err)
	require.Regexp(t, `(?m)^redis\s+DOWN\s+redis://127.0.0.1:1/0`, r.stdout)

	// Unset: the default server.
	r = cliEnv(t, map[string]string{"DATABASE_URL": dbURL}, "health", "--timeout", "1s")
	require.Regexp(t, `(?m)^redis\s+(ok|DOWN)\s+.*`+defaultRedisURL, r.stdout)

	// Commands that need Redis refuse, saying why.
	for _, args := range [][]string{{"cache", "stats"}, {"cache", "get", "k"}, {"bench"}} {
		r = cliEnv(t, empty, args...)
		require.Equal(t, 2, r.code, "%v: %v", args, r.err)
		require.ErrorContains(t, r.err, "needs Redis, but REDIS_URL is empty (no-cache mode)")
	}

	// The demo runs in no-cache mode and says why.
	args := demoArgs(t)
	for i, a := range args {
		if a == "--redis-url" {
			args = append(args[:i], args[i+2:]...)
			break
		}
	}
	r = cliEnv(t, empty, args...)
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	require.Contains(t, r.stdout, `"mode": "no-cache"`)
	require.Contains(t, r.stdout, `"no_cache_reason": "REDIS_URL is empty"`)
}
