package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestIncrConcurrentExact(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, &Config{OpTimeout: 5 * time.Second}) // a burst of 1000 under -race
	ctx := ctxT(t, 20*time.Second)
	const n = 1000
	seen := make([]atomic.Bool, n+1)
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range n {
		wg.Go(func() {
			v, err := c.Incr(ctx, "rate:incr", 1, time.Minute)
			if err != nil || v < 1 || v > n || seen[v].Swap(true) {
				bad.Add(1)
			}
		})
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d increments failed or repeated a value", bad.Load())
	}
	if got := rdb.Get(ctx, c.FullKey("rate:incr")).Val(); got != fmt.Sprint(n) {
		t.Fatalf("counter %s, want %d", got, n)
	}
	ttl, err := c.TTL(ctx, "rate:incr")
	if err != nil || ttl <= 0 || ttl > time.Minute {
		t.Fatalf("counter TTL %v %v", ttl, err)
	}
	if v, err := c.Incr(ctx, "rate:incr", -n-5, time.Minute); err != nil || v != -5 {
		t.Fatalf("decrement: %d %v", v, err)
	}
	// A counter that somehow lost its TTL gets one back.
	if err := rdb.Persist(ctx, c.FullKey("rate:incr")).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Incr(ctx, "rate:incr", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(ctx, c.FullKey("rate:incr")).Val(); ttl <= 0 {
		t.Fatalf("counter left without TTL: %v", ttl)
	}
	// Incr of a cache entry is an error, not an outage.
	if err := c.Set(ctx, "entry", sampleRow(1), time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Incr(ctx, "entry", 1, time.Minute); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Incr of a value: %v", err)
	}
	if st := c.Stats(); st.RedisErrors != 0 || st.BreakerOpen {
		t.Fatalf("stats %+v", st)
	}
}

func TestAllowConcurrentExactlyLimit(t *testing.T) {
	t.Parallel()
	c, _ := realCache(t, &Config{OpTimeout: 5 * time.Second})
	ctx := ctxT(t, 20*time.Second)
	round := func(key string) int64 {
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for range 500 {
			wg.Go(func() {
				ok, err := c.Allow(ctx, key, 100, time.Minute)
				if err != nil {
					t.Error(err)
				}
				if ok {
					admitted.Add(1)
				}
			})
		}
		wg.Wait()
		return admitted.Load()
	}
	if n := round("rate:7:/api"); n != 100 {
		t.Fatalf("admitted %d of 500, want 100", n)
	}
	if ttl, err := c.TTL(ctx, "rate:7:/api"); err != nil || ttl <= 0 || ttl > time.Minute {
		t.Fatalf("window TTL %v %v", ttl, err)
	}
	// A new window admits 100 again.
	if err := c.Delete(ctx, "rate:7:/api"); err != nil {
		t.Fatal(err)
	}
	if n := round("rate:7:/api"); n != 100 {
		t.Fatalf("second window admitted %d, want 100", n)
	}

	// The window ends by itself.
	for i, want := range []bool{true, false} {
		if ok, err := c.Allow(ctx, "rate:short", 1, 200*time.Millisecond); ok != want || err != nil {
			t.Fatalf("call %d: %v %v, want %v", i, ok, err, want)
		}
	}
	waitFor(t, 5*time.Second, "the window to expire", func() bool {
		_, err := c.TTL(ctx, "rate:short")
		return errors.Is(err, ErrNotFound)
	})
	if ok, err := c.Allow(ctx, "rate:short", 1, 200*time.Millisecond); !ok || err != nil {
		t.Fatalf("new window: %v %v", ok, err)
	}
}

func TestDeletePrefix100k(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 60*time.Second)
	const n = 100_000
	pipe := rdb.Pipeline()
	for i := range n {
		pipe.Set(ctx, c.FullKey(fmt.Sprintf("dp:%d", i)), "\x11{}", time.Hour)
		if pipe.Len() == 2000 {
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Near misses that must survive.
	survivors := []string{"dp", "dq:1", "dpx:1", "Dp:1", "xdp:1"}
	for _, k := range survivors {
		pipe.Set(ctx, c.FullKey(k), "\x11{}", time.Hour)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	deleted, err := c.DeletePrefix(ctx, "dp:")
	t.Logf("DeletePrefix of %d keys took %v", n, time.Since(start))
	if err != nil || deleted != n {
		t.Fatalf("deleted %d, %v; want %d", deleted, err, n)
	}
	for _, k := range survivors {
		if rdb.Exists(ctx, c.FullKey(k)).Val() != 1 {
			t.Errorf("%s was deleted", k)
		}
	}
	if left := rdb.Keys(ctx, escapeGlob(c.FullKey("dp:"))+"*").Val(); len(left) != 0 { // KEYS only on a test's own prefix
		t.Fatalf("%d keys left", len(left))
	}
}

func TestDeletePrefixGlobCharsLiteral(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	prefix := `u:1*[ab]?\:`
	match := []string{prefix, prefix + "x", prefix + "*"}
	noMatch := []string{`u:1`, `u:12[ab]?\:`, `u:1*a?\:`, `u:1*[ab]x\:`, `u:1*[ab]?:`, `u:1x[ab]?\:y`, `u:1*[ab]?\`}
	for _, k := range append(match, noMatch...) {
		if err := rdb.Set(ctx, c.FullKey(k), "1", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.DeletePrefix(ctx, prefix)
	if err != nil || n != int64(len(match)) {
		t.Fatalf("deleted %d, %v; want %d", n, err, len(match))
	}
	for _, k := range noMatch {
		if rdb.Exists(ctx, c.FullKey(k)).Val() != 1 {
			t.Errorf("%q was deleted", k)
		}
	}
}

// DeletePrefix also voids leases and forgets in-process flights under the
// prefix: a load that began before it cannot fill afterwards.
func TestDeletePrefixVoidsLeases(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	started, release := make(chan struct{}), releaser(t)
	var loads atomic.Int64
	done := make(chan row, 1)
	go func() {
		v, _ := Fetch(ctx, c, "wf:1", time.Minute, func(context.Context) (row, error) {
			if loads.Add(1) == 1 {
				close(started)
				<-release.ch
				return sampleRow(1), nil
			}
			return sampleRow(2), nil
		})
		done <- v
	}()
	<-started
	if n, err := c.DeletePrefix(ctx, "wf:"); err != nil || n != 1 { // the lease
		t.Fatalf("DeletePrefix: %d %v", n, err)
	}
	c.mu.Lock()
	_, tracked := c.flights[c.FullKey("wf:1")]
	c.mu.Unlock()
	if !tracked {
		t.Fatal("flight not tracked")
	}
	release.do()
	if v := <-done; v != sampleRow(2) {
		t.Fatalf("got %+v, want the reloaded value", v)
	}
	want, _ := encodeValue(c.codec, sampleRow(2))
	if s := rdb.Get(ctx, c.FullKey("wf:1")).Val(); s != string(want) {
		t.Fatalf("Redis holds %q", s)
	}
	if st := c.Stats(); st.StaleFillsRejected != 1 {
		t.Fatalf("stats %+v", st)
	}
}
