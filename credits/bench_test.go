package credits_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// benchRepos returns a store and a user with a balance for the read
// benchmarks.
func benchUser(b *testing.B) (*credits.Store, int64) {
	b.Helper()
	store := credits.NewStore(testsvc.Pool(b))
	user := testsvc.NewID()
	if _, err := store.Add(context.Background(), credits.Change{UserID: user, Type: enrichment, Amount: 1000}); err != nil {
		b.Fatal(err)
	}
	return store, user
}

func runReads(b *testing.B, repo credits.Repo, user int64) {
	b.Helper()
	ctx := context.Background()
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("goroutines=%d", par), func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(par) // × GOMAXPROCS; the ratio between runs is what counts
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := repo.Balance(ctx, user, enrichment); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkStoreBalance is the Postgres primary-key read every cached read
// is measured against.
func BenchmarkStoreBalance(b *testing.B) {
	store, user := benchUser(b)
	runReads(b, store, user)
}

// BenchmarkCachedBalanceHit reads a balance that is in Redis.
func BenchmarkCachedBalanceHit(b *testing.B) {
	store, user := benchUser(b)
	cache := cachelayer.New(testsvc.Redis(b), &cachelayer.Config{Prefix: testsvc.Prefix(b)})
	b.Cleanup(func() { _ = cache.Close() })
	repo := credits.NewCached(store, cache, nil)
	b.Cleanup(func() { _ = repo.Close() })
	runReads(b, repo, user)
}

// BenchmarkCachedBalanceBreakerOpen reads through a cache whose Redis is
// gone and whose breaker is open: every read goes to Postgres, and the cost
// over BenchmarkStoreBalance is the cache layer's own.
func BenchmarkCachedBalanceBreakerOpen(b *testing.B) {
	store, user := benchUser(b)
	rdb := redis.NewClient(&redis.Options{
		Addr: fmt.Sprintf("127.0.0.1:%d", testsvc.FreePort(b)), ContextTimeoutEnabled: true,
		MaxRetries: -1, DialTimeout: 50 * time.Millisecond,
	})
	b.Cleanup(func() { _ = rdb.Close() })
	cache := cachelayer.New(rdb, &cachelayer.Config{Prefix: "bench:", BreakerCooldown: time.Hour})
	b.Cleanup(func() { _ = cache.Close() })
	repo := credits.NewCached(store, cache, nil)
	b.Cleanup(func() { _ = repo.Close() })
	ctx := context.Background()
	for range 20 {
		if _, err := repo.Balance(ctx, user, enrichment); err != nil {
			b.Fatal(err)
		}
		if cache.Stats().BreakerOpen {
			break
		}
	}
	if !cache.Stats().BreakerOpen {
		b.Fatal("breaker did not open")
	}
	runReads(b, repo, user)
}

// BenchmarkWrites measures changes per second: an Add with a fresh
// idempotency key on a user of each goroutine's own (no lock waits between
// goroutines), through the plain Store and through Cached (outbox row plus
// the Redis UNLINK after it). Compare runs by their ratio (ns/op), not by
// absolute numbers.
func BenchmarkWrites(b *testing.B) {
	store := credits.NewStore(testsvc.Pool(b))
	cache := cachelayer.New(testsvc.Redis(b), &cachelayer.Config{Prefix: testsvc.Prefix(b)})
	b.Cleanup(func() { _ = cache.Close() })
	cached := credits.NewCached(store, cache, nil)
	b.Cleanup(func() { _ = cached.Close() })
	for _, repo := range []struct {
		name string
		repo credits.Repo
	}{{"store", store}, {"cached", cached}} {
		for _, par := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", repo.name, par), func(b *testing.B) {
				ctx := context.Background()
				var seq atomic.Int64
				b.ReportAllocs()
				b.SetParallelism(par) // × GOMAXPROCS
				b.RunParallel(func(pb *testing.PB) {
					user := testsvc.NewID()
					for pb.Next() {
						c := credits.Change{UserID: user, Type: enrichment, Amount: 1,
							IdempotencyKey: "bench-" + strconv.FormatInt(seq.Add(1), 10)}
						if _, err := repo.repo.Add(ctx, c); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
