package integration_test

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// BenchmarkCreditsZipf9505 runs a 95/5 read/write mix over 1000 users whose
// popularity follows a Zipf law (s = 1.1) through the cached repository and
// reports the cache hit ratio of the reads and the loads (Postgres balance
// queries) per read. Run it with:
//
//	go test -run '^$' -bench CreditsZipf -benchtime 20000x ./integration_test/
func BenchmarkCreditsZipf9505(b *testing.B) {
	ctx := context.Background()
	pool := testsvc.NewPool(b, nil)
	cache := cachelayer.New(testsvc.Redis(b), &cachelayer.Config{Prefix: testsvc.Prefix(b)})
	b.Cleanup(func() { _ = cache.Close() })
	repo := credits.NewCached(credits.NewStore(pool), cache, nil)
	b.Cleanup(func() { _ = repo.Close() })

	const users = 1000
	base := testsvc.NewID() * 10_000
	for u := range int64(users) {
		if _, err := repo.Add(ctx, credits.Change{UserID: base + u, Type: "enrichment", Amount: 1_000_000}); err != nil {
			b.Fatal(err)
		}
	}
	before := cache.Stats()
	var reads atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		z := rand.NewZipf(r, 1.1, 1, users-1)
		var myReads int64
		for pb.Next() {
			user := base + int64(z.Uint64())
			var err error
			if r.IntN(100) < 5 {
				_, err = repo.Deduct(ctx, credits.Change{UserID: user, Type: "enrichment", Amount: 1})
			} else {
				_, err = repo.Balance(ctx, user, "enrichment")
				myReads++
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
		reads.Add(myReads)
	})
	b.StopTimer()
	after := cache.Stats()
	hits, misses := after.Hits-before.Hits, after.Misses-before.Misses
	if hits+misses > 0 {
		b.ReportMetric(float64(hits)/float64(hits+misses), "hit-ratio")
	}
	if n := reads.Load(); n > 0 {
		b.ReportMetric(float64(after.Loads-before.Loads)/float64(n), "loads/read")
	}
}
