package ghlcache_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/ghl-agency/ghlcache"
	"github.com/ghl-agency/ghlcache/credits"
)

// A service's main: open both cached repositories once, use them from every
// request, close them on shutdown.
func Example() {
	ctx := context.Background()
	repos, err := ghlcache.Open(ctx, ghlcache.Config{
		DatabaseURL: os.Getenv("DATABASE_URL"),
		RedisURL:    os.Getenv("REDIS_URL"), // empty: no-cache mode, every read goes to Postgres
		Migrate:     true,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer repos.Close()

	// A request handler charging one enrichment credit, safely retryable.
	b, err := repos.Credits.Deduct(ctx, credits.Change{
		UserID: 42, Type: "enrichment", Amount: 1,
		Reason: "lead enrichment", IdempotencyKey: "req-7f3a",
	})
	switch {
	case errors.Is(err, credits.ErrInsufficient):
		fmt.Println("out of credits")
	case err != nil:
		log.Print(err)
	default:
		fmt.Println("balance now", b.Amount)
	}

	// Reads are served from Redis for 60 s, never older than an acknowledged change.
	b, err = repos.Credits.Balance(ctx, 42, "enrichment")
	if err == nil {
		fmt.Println("balance", b.Amount, "version", b.Version)
	}
}
