// Command service is an example HTTP service on ghlcache: credit balances
// and workflow definitions through the cached repositories, a per-user rate
// limit on the cache's counters, readiness from Repos.HealthHandler,
// Prometheus metrics from an OpenTelemetry MeterProvider, and a graceful
// shutdown. It is configured by environment variables (see config.go and
// README.md):
//
//	go run ./examples/service
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cachelayer"
)

func main() {
	// go-redis logs through one process-wide logger; route its lines
	// (a "failed to dial" a second while Redis is down) to the service's
	// log, passwords masked. Set once here, not in run: tests start
	// several servers in one process.
	redis.SetLogger(cachelayer.RedisLogger(slog.New(slog.NewTextHandler(os.Stdout, nil))))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.LookupEnv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}
