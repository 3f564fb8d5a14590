package cachelayer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// The lease, fill, delete, counter and prefix-delete paths on a real Redis
// Cluster of 3 masters: every command touches one key, so nothing fails with
// CROSSSLOT, and DeletePrefix reaches every master.
func TestCluster(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-master Redis Cluster")
	}
	cluster := testsvc.StartCluster(t, 3)
	cc := cluster.Client()
	c := New(cc, &Config{Prefix: "ghl:", OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = c.Close() })
	ctx := ctxT(t, 60*time.Second)

	// Fetch many keys (all slots' masters): miss + lease + fill, then hits.
	const keys = 60
	for round := range 2 {
		for i := range keys {
			key := fmt.Sprintf("credits:%d:enrichment", i)
			v, err := Fetch(ctx, c, key, time.Minute, func(context.Context) (row, error) { return sampleRow(int64(i)), nil })
			if err != nil || v != sampleRow(int64(i)) {
				t.Fatalf("round %d %s: %+v %v", round, key, v, err)
			}
		}
	}
	if st := c.Stats(); st.Loads != keys || st.Hits != keys || st.RedisErrors != 0 {
		t.Fatalf("stats %+v", st)
	}

	// Stale-set race on the cluster: Delete voids the lease.
	started, release := make(chan struct{}), releaser(t)
	var calls atomic.Int64
	done := make(chan row, 1)
	go func() {
		v, _ := Fetch(ctx, c, "workflow:1:definition", time.Minute, func(context.Context) (row, error) {
			if calls.Add(1) == 1 {
				close(started)
				<-release.ch
				return sampleRow(100), nil // the old value
			}
			return sampleRow(101), nil
		})
		done <- v
	}()
	<-started
	if err := c.Delete(ctx, "workflow:1:definition"); err != nil {
		t.Fatal(err)
	}
	release.do()
	if v := <-done; v != sampleRow(101) {
		t.Fatalf("got %+v after the invalidation", v)
	}
	if st := c.Stats(); st.StaleFillsRejected != 1 {
		t.Fatalf("stats %+v", st)
	}

	// Delete of keys in different slots (one UNLINK per key).
	if err := c.Delete(ctx, "credits:1:enrichment", "credits:2:enrichment", "credits:3:enrichment"); err != nil {
		t.Fatalf("multi-slot Delete: %v", err)
	}
	for _, k := range []string{"credits:1:enrichment", "credits:2:enrichment", "credits:3:enrichment"} {
		if ok, err := c.Exists(ctx, k); ok || err != nil {
			t.Fatalf("%s still exists: %v", k, err)
		}
	}

	// Counters.
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if _, err := c.Incr(ctx, "rate:1:/x", 1, time.Minute); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if v, err := c.Incr(ctx, "rate:1:/x", 0, time.Minute); err != nil || v != 100 {
		t.Fatalf("counter %d %v", v, err)
	}
	if ok, err := c.Allow(ctx, "rate:2:/y", 1, time.Minute); !ok || err != nil {
		t.Fatalf("Allow %v %v", ok, err)
	}

	// DeletePrefix across the masters.
	const many = 3000
	pipe := cc.Pipeline()
	for i := range many {
		pipe.Set(ctx, c.FullKey(fmt.Sprintf("leads:%d", i)), "\x11[]", time.Hour)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	// The keys to delete are on every master.
	var mu sync.Mutex
	perMaster := map[string]int64{}
	if err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		n, err := m.DBSize(ctx).Result()
		mu.Lock()
		perMaster[m.Options().Addr] = n
		mu.Unlock()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for addr, n := range perMaster {
		if n == 0 {
			t.Fatalf("master %s holds no key: %v", addr, perMaster)
		}
	}

	n, err := c.DeletePrefix(ctx, "leads:")
	if err != nil || n != many {
		t.Fatalf("DeletePrefix on the cluster: %d %v; want %d", n, err, many)
	}
	n, err = c.DeletePrefix(ctx, "credits:")
	if err != nil || n != keys-3 {
		t.Fatalf("DeletePrefix credits: %d %v; want %d", n, err, keys-3)
	}
	if h := c.Health(ctx); !h.Healthy {
		t.Fatalf("health %+v", h)
	}
}
