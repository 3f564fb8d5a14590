package cachelayer_test

import (
	"context"
	"log/slog"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cachelayer"
)

// A service sends go-redis's own log lines (its "failed to dial" lines
// while Redis is down) to the logger it gives the cache. The library never
// changes go-redis's process-wide logger by itself.
func ExampleRedisLogger() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	redis.SetLogger(cachelayer.RedisLogger(logger))

	c, err := cachelayer.Open(context.Background(), os.Getenv("REDIS_URL"), &cachelayer.Config{Logger: logger})
	if err != nil {
		logger.Error("cache", "err", err)
		return
	}
	defer c.Close()
}
