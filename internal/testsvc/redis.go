package testsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/localservices"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

// redisService is the shared test Redis.
var redisService = &service{
	name: "Redis", envVar: "TEST_REDIS_URL", localURL: localservices.RedisURL,
	answers: localRedisAnswers, fallback: func() Fallback { return redisFallback },
}

// RedisURL returns the URL of the shared test Redis: TEST_REDIS_URL, else
// the local Redis if it answers (localservices.RedisURL), else the fallback
// of [SetFallbacks]. Tests must not FLUSHDB it; they use [Prefix].
func RedisURL(t testing.TB) string {
	t.Helper()
	return redisService.resolve(t)
}

func localRedisAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: localservices.RedisAddr, DialTimeout: time.Second, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer rdb.Close()
	return rdb.Ping(ctx).Err() == nil
}

// Redis returns a new client of the shared test Redis with
// ContextTimeoutEnabled, checked with a PING and closed when t ends.
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(RedisURL(t))
	if err != nil {
		t.Fatalf("testsvc: parse redis url %s: %v", redact.URL(RedisURL(t)), err)
	}
	opts.ContextTimeoutEnabled = true
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		unavailable(t, "Redis", "TEST_REDIS_URL", err)
	}
	return rdb
}

var nonKeyChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// Prefix returns a key prefix of t's own ("test:<name>:<random>:"), for
// cachelayer.Config.Prefix. Keys under it are deleted when t ends.
func Prefix(t testing.TB) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := nonKeyChars.ReplaceAllString(t.Name(), "_")
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	prefix := "test:" + name + ":" + hex.EncodeToString(b[:]) + ":"
	rdb := Redis(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := DeleteKeys(ctx, rdb, prefix); err != nil {
			t.Logf("testsvc: delete keys %s*: %v", prefix, err)
		}
	})
	return prefix
}

// DeleteKeys deletes every key that starts with prefix (no glob characters)
// on every master rdb reaches, with SCAN and single-key UNLINKs.
func DeleteKeys(ctx context.Context, rdb redis.UniversalClient, prefix string) error {
	if strings.ContainsAny(prefix, `*?[]\`) {
		return fmt.Errorf("testsvc: prefix %q has glob characters", prefix)
	}
	del := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			if err := c.Unlink(ctx, iter.Val()).Err(); err != nil {
				return err
			}
		}
		return iter.Err()
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, del)
	}
	if c, ok := rdb.(*redis.Client); ok {
		return del(ctx, c)
	}
	return fmt.Errorf("testsvc: DeleteKeys: unsupported client %T", rdb)
}
