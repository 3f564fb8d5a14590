// Package testenv adds containers to internal/testsvc for the integration
// tests: when TEST_DATABASE_URL or TEST_REDIS_URL is unset and no local
// server answers, but a Docker engine does, Postgres and Redis are started
// with testcontainers-go (once per test binary) and stopped when the run
// ends. Everything else — the per-binary database, key prefixes, proxies,
// redis-server processes, tracers — is internal/testsvc's; tests call it
// directly. Route TestMain through [Main]:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
package testenv

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// Main installs the container fallbacks and runs the tests through
// testsvc.Main, which releases the database and the containers at the end.
func Main(m *testing.M) int {
	testsvc.SetFallbacks(StartPostgres, StartRedis)
	return testsvc.Main(m)
}

// StartFunc starts a service and returns its URL and a function that
// removes it (the shape of testsvc.Fallback).
type StartFunc = func(ctx context.Context) (url string, stop func(context.Context) error, err error)

// StartPostgres starts a Postgres container (user and password postgres,
// database postgres) and returns its URL and a function that removes it.
func StartPostgres(ctx context.Context) (string, func(context.Context) error, error) {
	if err := dockerHealthy(ctx); err != nil {
		return "", nil, fmt.Errorf("no Docker engine: %w", err)
	}
	c, err := tcpostgres.Run(ctx, "postgres:15-alpine",
		tcpostgres.WithDatabase("postgres"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies())
	if err != nil {
		return "", nil, fmt.Errorf("start postgres container: %w", err)
	}
	stop := func(ctx context.Context) error { return c.Terminate(ctx) }
	u, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = stop(ctx)
		return "", nil, fmt.Errorf("postgres container url: %w", err)
	}
	return u, stop, nil
}

// StartRedis starts a Redis container and returns its URL and a function
// that removes it.
func StartRedis(ctx context.Context) (string, func(context.Context) error, error) {
	if err := dockerHealthy(ctx); err != nil {
		return "", nil, fmt.Errorf("no Docker engine: %w", err)
	}
	c, err := tcredis.Run(ctx, "redis:7.0-alpine")
	if err != nil {
		return "", nil, fmt.Errorf("start redis container: %w", err)
	}
	stop := func(ctx context.Context) error { return c.Terminate(ctx) }
	u, err := c.ConnectionString(ctx)
	if err != nil {
		_ = stop(ctx)
		return "", nil, fmt.Errorf("redis container url: %w", err)
	}
	return u, stop, nil
}

var (
	dockerOnce sync.Once
	dockerErr  error
)

// dockerHealthy reports whether a Docker engine answers (what
// testcontainers' SkipIfProviderIsNotHealthy checks). It fails fast when none
// is installed.
func dockerHealthy(ctx context.Context) error {
	dockerOnce.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				dockerErr = fmt.Errorf("docker provider: %v", r)
			}
		}()
		p, err := testcontainers.NewDockerProvider()
		if err != nil {
			dockerErr = err
			return
		}
		defer p.Close()
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		dockerErr = p.Health(ctx)
	})
	return dockerErr
}
