package main

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestHealthOK(t *testing.T) {
	t.Parallel()
	r := cli(t, "health", "--database-url", testsvc.DatabaseURL(t), "--redis-url", testsvc.RedisURL(t))
	require.NoError(t, r.err, "stdout: %s", r.stdout)
	require.Regexp(t, `(?m)^postgres\s+ok\s+ping \S+ \(connect \S+\)\s+postgres://`, r.stdout)
	require.Regexp(t, `(?m)^redis\s+ok\s+ping \S+ \(connect \S+\)\s+redis://`, r.stdout)
	require.Empty(t, r.stderr)
}

func TestHealthNoCache(t *testing.T) {
	t.Parallel()
	// Redis is never contacted: its URL points nowhere.
	r := cli(t, "--no-cache", "health", "--database-url", testsvc.DatabaseURL(t), "--redis-url", "redis://127.0.0.1:1/0")
	require.NoError(t, r.err, "stdout: %s", r.stdout)
	require.Regexp(t, `(?m)^postgres\s+ok\s+`, r.stdout)
	require.Regexp(t, `(?m)^redis\s+skipped \(--no-cache\)`, r.stdout)
}

func TestHealthDown(t *testing.T) {
	t.Parallel()
	dbURL, redisURL := testsvc.DatabaseURL(t), testsvc.RedisURL(t)
	for _, tc := range []struct {
		name      string
		db, redis string
		down      []string
	}{
		{"postgres refused", "postgres://u:" + password + "@127.0.0.1:1/x", redisURL, []string{"postgres"}},
		{"redis refused", dbURL, "redis://u:" + password + "@127.0.0.1:1/0", []string{"redis"}},
		{"both refused", "postgres://u:" + password + "@127.0.0.1:1/x", "redis://:" + password + "@127.0.0.1:1/0", []string{"postgres", "redis"}},
		{"postgres unparsable", "postgres://u:" + password + "@127.0.0.1:port/x", redisURL, []string{"postgres"}},
		{"redis unparsable", dbURL, "redis://u:" + password + "@127.0.0.1:port/0", []string{"redis"}},
		{"redis bad database", dbURL, "redis://u:" + password + "@127.0.0.1:6379/zz", []string{"redis"}},
		{"redis bad scheme", dbURL, "http://u:" + password + "@127.0.0.1:6379/0", []string{"redis"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, "health", "--database-url", tc.db, "--redis-url", tc.redis)
			require.Error(t, r.err)
			require.Equal(t, 1, r.code)
			for _, svc := range tc.down {
				require.Regexp(t, `(?m)^`+svc+`\s+DOWN\s+`, r.stdout)
				require.Contains(t, r.err.Error(), svc+" is down")
			}
			requireNoSecret(t, r)
		})
	}
}

// TestHealthBounded points both checks at a server that accepts connections
// and never answers: each check must give up at --timeout.
func TestHealthBounded(t *testing.T) {
	t.Parallel()
	addr := blackHole(t)
	start := time.Now()
	r := cli(t, "health", "--timeout", "300ms",
		"--database-url", "postgres://u:"+password+"@"+addr+"/x?sslmode=disable",
		"--redis-url", "redis://u:"+password+"@"+addr+"/0")
	elapsed := time.Since(start)
	require.Error(t, r.err)
	require.Regexp(t, `(?m)^postgres\s+DOWN\s+`, r.stdout)
	require.Regexp(t, `(?m)^redis\s+DOWN\s+`, r.stdout)
	require.Less(t, elapsed, 1500*time.Millisecond, "checks run at once, each bounded by --timeout")
	requireNoSecret(t, r)
}

// blackHole listens on a loopback port, accepts connections and never
// writes to them; it returns the address.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}
