package cachelayer_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
)

// In no-cache mode (no Redis configured) Fetch passes every read to its
// loader, still one load per key at a time.
func ExampleFetch() {
	ctx := context.Background()
	c := cachelayer.New(nil, nil)
	defer c.Close()

	name, err := cachelayer.Fetch(ctx, c, "user:7", cachelayer.TTLShort, func(ctx context.Context) (string, error) {
		return "Ada", nil // e.g. a SELECT by primary key
	})
	fmt.Println(name, err)

	_, err = cachelayer.Fetch(ctx, c, "user:8", cachelayer.TTLShort, func(ctx context.Context) (string, error) {
		return "", fmt.Errorf("user 8: %w", cachelayer.ErrNotFound) // cached as a marker when Redis is there
	})
	fmt.Println(errors.Is(err, cachelayer.ErrNotFound))

	fmt.Println(c.Available(), c.Health(ctx).Err)
	// Output:
	// Ada <nil>
	// true
	// false cache disabled
}

// Open reads the Redis URL from the environment, as the original service
// did: unset or empty means no-cache mode.
func ExampleOpen() {
	ctx := context.Background()
	c, err := cachelayer.Open(ctx, os.Getenv("REDIS_URL"), &cachelayer.Config{
		OpTimeout: 50 * time.Millisecond, // each Redis call on the read path
	})
	if err != nil {
		log.Fatal(err) // a malformed URL; the message never shows the password
	}
	defer c.Close()

	type definition struct {
		ID   int64
		Name string
	}
	def, err := cachelayer.Fetch(ctx, c, "workflow:42:definition", cachelayer.TTLMedium,
		func(ctx context.Context) (definition, error) {
			return definition{ID: 42, Name: "onboarding"}, nil // from Postgres
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(def.Name)

	// After a committed write: invalidate (voids leases, so no stale fill).
	if err := c.Delete(ctx, "workflow:42:definition"); err != nil {
		log.Print(err) // Redis unavailable: retry later (e.g. from an outbox)
	}
}
