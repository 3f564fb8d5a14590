package integration_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// TestRedisKilledMidLoad: a Redis of the test's own is killed while a load
// is in flight and while readers and writers run; no read fails, no read
// returns a balance older than an acknowledged change, and once Redis is
// back the outbox drains and every cached balance equals Postgres's. Not
// parallel: its Redis is its own, and the outbox is shared by every instance
// on this database, which all assume one Redis.
func TestRedisKilledMidLoad(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	srv := testsvc.StartRedis(t)
	prefix := "outage:"
	a := newInstance(t, prefix, boundedClient(t, srv.Addr), nil)
	b := newInstance(t, prefix, boundedClient(t, srv.Addr), nil)
	users := []int64{testsvc.NewID(), testsvc.NewID(), testsvc.NewID(), testsvc.NewID()}
	for _, u := range users {
		_, err := a.credits.Add(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 1_000_000})
		require.NoError(t, err)
	}

	// A load in flight when Redis dies: the reader still gets its value.
	held, release := a.tracer.HoldNext()
	got := make(chan error, 1)
	go func() {
		bal, err := a.credits.Balance(ctx, users[0], "enrichment")
		if err == nil && bal.Amount != 1_000_000 {
			err = errWrongBalance(bal)
		}
		got <- err
	}()
	<-held
	srv.Kill()
	release()
	require.NoError(t, <-got, "a read whose load outlived Redis")

	// Readers and writers on both instances while Redis is down, then back.
	var (
		mu       sync.Mutex
		acked    = map[int64]int64{} // user → newest acknowledged version
		reads    atomic.Int64
		failures atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for w := range 4 {
		inst := []*instance{a, b}[w%2]
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				u := users[i%len(users)]
				if w == 0 && i%5 == 0 {
					bal, err := inst.credits.Deduct(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 1})
					if err != nil {
						failures.Add(1)
						t.Errorf("deduct during outage: %v", err)
						return
					}
					mu.Lock()
					acked[u] = max(acked[u], bal.Version)
					mu.Unlock()
					continue
				}
				mu.Lock()
				minVer := acked[u]
				mu.Unlock()
				bal, err := inst.credits.Balance(ctx, u, "enrichment")
				reads.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("read during outage: %v", err)
					return
				}
				if w == 0 && bal.Version < minVer {
					// Same instance as the writer: read-your-writes holds
					// even while Redis is down.
					t.Errorf("read version %d older than acknowledged %d", bal.Version, minVer)
				}
			}
		})
	}
	waitReads := func(n int64) {
		target := reads.Load() + n
		for reads.Load() < target && !t.Failed() {
			time.Sleep(5 * time.Millisecond) // polling with the test's deadline
			require.NoError(t, ctx.Err())
		}
	}
	waitReads(200)
	srv.Restart()
	began := time.Now()
	require.Eventually(t, func() bool { return a.cache.Stats().Hits > 0 && a.cache.Available() && b.cache.Available() },
		10*time.Second, 10*time.Millisecond, "the cache is used again after Redis returns")
	t.Logf("cache available again %v after Redis restarted", time.Since(began).Round(time.Millisecond))
	waitReads(200)
	close(stop)
	wg.Wait()
	require.Zero(t, failures.Load(), "0 failed reads or writes")

	require.Eventually(t, func() bool {
		st, err := a.credits.OutboxStats(ctx)
		return err == nil && st.Depth == 0
	}, 10*time.Second, 20*time.Millisecond, "the outbox drains after Redis returns")
	store := credits.NewStore(testsvc.Pool(t))
	for _, u := range users {
		want, err := store.Balance(ctx, u, "enrichment")
		require.NoError(t, err)
		for _, inst := range []*instance{a, b} {
			got, err := inst.credits.Balance(ctx, u, "enrichment")
			require.NoError(t, err)
			require.Equal(t, want, got, "cached balance equals Postgres's after recovery")
		}
	}
	t.Logf("outage: %d reads, fallbacks a=%d b=%d, breaker recoveries a=%d b=%d",
		reads.Load(), a.cache.Stats().Fallbacks, b.cache.Stats().Fallbacks, a.cache.Stats().Recoveries, b.cache.Stats().Recoveries)
}

type wrongBalance credits.Balance

func (w wrongBalance) Error() string { return "wrong balance" }

func errWrongBalance(b credits.Balance) error { return wrongBalance(b) }
