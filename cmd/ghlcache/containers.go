package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"
)

// The images the demo starts when it finds no local services: the versions
// the library is tested against.
const (
	demoPostgresImage = "postgres:15-alpine"
	demoRedisImage    = "redis:7.0-alpine"
)

// startContainers is the demo's containerStarter: testcontainers-go, which
// also removes the containers (through its reaper) if the demo dies.
func startContainers(ctx context.Context, postgres, redis bool, progress io.Writer) (dbURL, redisURL string, stop func(context.Context) error, err error) {
	if err := dockerHealthy(ctx); err != nil {
		return "", "", nil, fmt.Errorf("%w: %w", errNoDocker, err)
	}
	var started []testcontainers.Container
	stop = func(ctx context.Context) error {
		var errs []error
		for _, c := range started {
			errs = append(errs, c.Terminate(ctx))
		}
		return errors.Join(errs...)
	}
	fail := func(err error) (string, string, func(context.Context) error, error) {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), containerStopTimeout)
		defer cancel()
		return "", "", nil, errors.Join(err, stop(sctx))
	}
	if postgres {
		fmt.Fprintf(progress, "ghlcache demo: starting %s\n", demoPostgresImage)
		c, err := tcpostgres.Run(ctx, demoPostgresImage,
			tcpostgres.WithDatabase("postgres"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
			tcpostgres.BasicWaitStrategies())
		if c != nil {
			started = append(started, c)
		}
		if err != nil {
			return fail(fmt.Errorf("postgres container: %w", err))
		}
		if dbURL, err = c.ConnectionString(ctx, "sslmode=disable"); err != nil {
			return fail(fmt.Errorf("postgres container url: %w", err))
		}
	}
	if redis {
		fmt.Fprintf(progress, "ghlcache demo: starting %s\n", demoRedisImage)
		c, err := tcredis.Run(ctx, demoRedisImage)
		if c != nil {
			started = append(started, c)
		}
		if err != nil {
			return fail(fmt.Errorf("redis container: %w", err))
		}
		if redisURL, err = c.ConnectionString(ctx); err != nil {
			return fail(fmt.Errorf("redis container url: %w", err))
		}
	}
	return dbURL, redisURL, stop, nil
}

// dockerHealthy reports whether a Docker engine answers. testcontainers
// panics in some setups without one; that is "no engine" too.
func dockerHealthy(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("docker provider: %v", r)
		}
	}()
	p, err := testcontainers.NewDockerProvider()
	if err != nil {
		return err
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return p.Health(ctx)
}
