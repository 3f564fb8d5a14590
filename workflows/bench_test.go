package workflows_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
	"github.com/ghl-agency/ghlcache/workflows"
)

func benchDefinition(b *testing.B, store *workflows.Store) int64 {
	b.Helper()
	spec := json.RawMessage(`{"trigger":"contact.created","steps":[{"id":1,"action":"email","template":"welcome"},{"id":2,"action":"wait","hours":24},{"id":3,"action":"sms","text":"hi"}]}`)
	d, err := store.Save(context.Background(), workflows.Definition{Name: "bench", Spec: spec})
	if err != nil {
		b.Fatal(err)
	}
	return d.ID
}

func runDefinitionReads(b *testing.B, repo workflows.Repo, id int64) {
	b.Helper()
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := repo.Definition(ctx, id); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkStoreDefinition is the Postgres read of a small definition.
func BenchmarkStoreDefinition(b *testing.B) {
	store := workflows.NewStore(testsvc.Pool(b))
	runDefinitionReads(b, store, benchDefinition(b, store))
}

// BenchmarkCachedDefinitionHit reads a definition that is in Redis.
func BenchmarkCachedDefinitionHit(b *testing.B) {
	store := workflows.NewStore(testsvc.Pool(b))
	cache := cachelayer.New(testsvc.Redis(b), &cachelayer.Config{Prefix: testsvc.Prefix(b)})
	b.Cleanup(func() { _ = cache.Close() })
	repo := workflows.NewCached(store, cache, nil)
	b.Cleanup(func() { _ = repo.Close() })
	runDefinitionReads(b, repo, benchDefinition(b, store))
}
