// Command services runs a command with TEST_DATABASE_URL and TEST_REDIS_URL
// set, so that every package's tests share one Postgres and one Redis:
//
//	go run ./integration_test/cmd/services make test-each
//
// A variable already set is kept. When one is unset and the local server
// (internal/localservices) answers, the command runs as it is (the tests
// find the local server themselves). Otherwise, when a Docker engine
// answers, the service is started once with testcontainers-go, its URL is
// handed to the command, and it is removed when the command ends. Without
// either, the command runs as it is and the tests skip (or fail with
// REQUIRE_INTEGRATION=1). The exit status is the command's.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/integration_test/testenv"
	"github.com/ghl-agency/ghlcache/internal/localservices"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: services command [args...]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var stops []func(context.Context) error
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, s := range stops {
			if err := s(ctx); err != nil {
				fmt.Fprintf(os.Stderr, "services: remove container: %v\n", err)
			}
		}
	}()
	provide := func(envVar, name string, local func(context.Context) bool, start testenv.StartFunc) {
		if os.Getenv(envVar) != "" || local(ctx) {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		u, s, err := start(sctx)
		if err != nil {
			fmt.Fprintf(os.Stderr, "services: %s: no local server and %v; tests that need it skip\n", name, err)
			return
		}
		stops = append(stops, s)
		fmt.Fprintf(os.Stderr, "services: started %s with testcontainers-go for this run\n", name)
		_ = os.Setenv(envVar, u)
	}
	provide("TEST_DATABASE_URL", "Postgres", localPostgres, testenv.StartPostgres)
	provide("TEST_REDIS_URL", "Redis", localRedis, testenv.StartRedis)

	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.ExitCode()
	default:
		fmt.Fprintf(os.Stderr, "services: %v\n", err)
		return 1
	}
}

func localPostgres(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, localservices.DatabaseURL)
	if err != nil {
		return false
	}
	_ = conn.Close(ctx)
	return true
}

func localRedis(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: localservices.RedisAddr, DialTimeout: time.Second, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer rdb.Close()
	return rdb.Ping(ctx).Err() == nil
}
