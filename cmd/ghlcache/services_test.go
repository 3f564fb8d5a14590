package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// closedURLs points env's default URLs at loopback ports nothing listens on.
func closedURLs(t *testing.T, e *env) (pgAddr, redisAddr string) {
	pgAddr = fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(t))
	redisAddr = fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(t))
	e.defaults.databaseURL = "postgres://postgres@" + pgAddr + "/postgres?sslmode=disable"
	e.defaults.redisURL = "redis://" + redisAddr + "/0"
	return pgAddr, redisAddr
}

// noURLEnv is the environment of a fresh laptop: neither DATABASE_URL nor
// REDIS_URL set.
func noURLEnv(name string) (string, bool) {
	if name == "DATABASE_URL" || name == "REDIS_URL" {
		return "", false
	}
	return os.LookupEnv(name)
}

// fakeContainers stands in for Docker: it "starts" a service by handing out
// the test's own Postgres database and Redis, and records what it was asked.
type fakeContainers struct {
	t               *testing.T
	calls, stops    atomic.Int32
	postgres, redis atomic.Bool
	dbURL, redisURL string
}

func (f *fakeContainers) start(_ context.Context, pg, rds bool, progress io.Writer) (string, string, func(context.Context) error, error) {
	f.calls.Add(1)
	f.postgres.Store(pg)
	f.redis.Store(rds)
	var db, r string
	if pg {
		db = f.dbURL
	}
	if rds {
		r = f.redisURL
	}
	fmt.Fprintln(progress, "fake: started")
	return db, r, func(context.Context) error { f.stops.Add(1); return nil }, nil
}

// smallDemo is a demo run small enough for a test, without URL flags.
func smallDemo(t *testing.T) []string {
	return []string{"demo", "--json", "--db-name", "", "--prefix", testsvc.Prefix(t),
		"--duration", "200ms", "--users", "20", "--workflows", "4", "--concurrency", "2", "--burst", "20"}
}

func TestDemoStartsContainersWhenNothingAnswers(t *testing.T) {
	t.Parallel()
	e := &env{lookupEnv: noURLEnv, terminal: isTerminal}
	pgAddr, redisAddr := closedURLs(t, e)
	f := &fakeContainers{t: t, dbURL: testsvc.NewDatabase(t), redisURL: testsvc.RedisURL(t)}
	e.containers = f.start

	r := cliWith(t, e, smallDemo(t)...)
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	require.EqualValues(t, 1, f.calls.Load())
	require.True(t, f.postgres.Load())
	require.True(t, f.redis.Load())
	require.EqualValues(t, 1, f.stops.Load(), "the containers are removed at the end")
	require.Contains(t, r.stderr, "nothing answers at "+pgAddr+" (Postgres) and "+redisAddr+" (Redis)")
	require.Contains(t, r.stderr, "removed the containers")
	require.Contains(t, r.stdout, `"mode": "redis"`)
}

func TestDemoStartsOnlyTheMissingService(t *testing.T) {
	t.Parallel()
	e := &env{lookupEnv: noURLEnv, terminal: isTerminal}
	_, redisAddr := closedURLs(t, e)
	e.defaults.databaseURL = testsvc.NewDatabase(t) // Postgres answers at its default
	f := &fakeContainers{t: t, redisURL: testsvc.RedisURL(t)}
	e.containers = f.start

	r := cliWith(t, e, smallDemo(t)...)
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	require.False(t, f.postgres.Load())
	require.True(t, f.redis.Load())
	require.Contains(t, r.stderr, "nothing answers at "+redisAddr+" (Redis);")
	require.EqualValues(t, 1, f.stops.Load())
}

func TestDemoWithoutServicesOrDockerSaysHowToGetThem(t *testing.T) {
	t.Parallel()
	e := &env{lookupEnv: noURLEnv, terminal: isTerminal}
	pgAddr, redisAddr := closedURLs(t, e)
	e.containers = func(context.Context, bool, bool, io.Writer) (string, string, func(context.Context) error, error) {
		return "", "", nil, fmt.Errorf("%w: cannot connect to the Docker daemon", errNoDocker)
	}
	r := cliWith(t, e, smallDemo(t)...)
	require.Error(t, r.err)
	require.Equal(t, 1, r.code)
	advice := strings.Split(strings.TrimSpace(r.stderr), "\n")
	require.Len(t, advice, 2, r.stderr)
	require.Contains(t, advice[0], "nothing answers at "+pgAddr+" (Postgres) and "+redisAddr+" (Redis), and no Docker engine")
	require.Contains(t, advice[1], "apt install postgresql redis-server")
	require.Contains(t, advice[1], "--database-url")
	require.Empty(t, r.stdout)
}

func TestDemoNeverReplacesAServiceTheUserNamed(t *testing.T) {
	t.Parallel()
	e := &env{lookupEnv: noURLEnv, terminal: isTerminal}
	closedURLs(t, e)
	e.containers = func(context.Context, bool, bool, io.Writer) (string, string, func(context.Context) error, error) {
		t.Error("containers started for services given by flags")
		return "", "", nil, errNoDocker
	}
	closed := fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(t))
	args := append(smallDemo(t), "--database-url", "postgres://postgres@"+closed+"/postgres?sslmode=disable",
		"--redis-url", "redis://"+closed+"/0")
	r := cliWith(t, e, args...)
	require.Error(t, r.err)
	require.Contains(t, r.stderr, "redis "+"redis://"+closed+"/0 is down")

	// REDIS_URL set but empty is no-cache mode: no Redis is needed.
	e2 := &env{terminal: isTerminal, lookupEnv: func(name string) (string, bool) {
		if name == "REDIS_URL" {
			return "", true
		}
		return noURLEnv(name)
	}}
	closedURLs(t, e2)
	var asked atomic.Bool
	e2.containers = func(_ context.Context, pg, rds bool, _ io.Writer) (string, string, func(context.Context) error, error) {
		asked.Store(true)
		require.True(t, pg)
		require.False(t, rds, "no Redis in no-cache mode")
		return "", "", nil, errNoDocker
	}
	r = cliWith(t, e2, smallDemo(t)...)
	require.Error(t, r.err)
	require.True(t, asked.Load())
	require.Contains(t, r.stderr, "(Postgres), and no Docker engine")
}
