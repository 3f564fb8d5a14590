// Command ghlcache operates a ghlcache deployment and shows what the cache
// does. Its commands:
//
//	migrate     apply, roll back or inspect the schema migrations
//	            (up, down, status, version)
//	health      check that Postgres and Redis answer, and how fast
//	demo        run the same workload without and with the cache, and
//	            compare (throughput, latency, Postgres queries, consistency)
//	bench       compare ghlcache with Postgres alone, naive cache-aside and
//	            go-redis/cache
//	cache       inspect and clear cached entries (get, del, del-prefix, stats)
//
// Usage:
//
//	ghlcache [global flags] <command> [flags] [arguments]
//
// Run "ghlcache --help" for the list of commands, and "ghlcache <command>
// --help" for one command. Exit codes: 0 success, 1 failure, 2 usage error.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

func main() {
	// go-redis logs dial failures to stderr by itself, about once a second
	// during an outage; the commands report every error once, in their own
	// words, so its lines are dropped. (A service routes them to its
	// slog.Logger with cachelayer.RedisLogger instead.)
	redis.SetLogger(discardLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(report(os.Stderr, err))
}

// discardLogger silences go-redis's internal logging.
type discardLogger struct{}

func (discardLogger) Printf(context.Context, string, ...any) {}
