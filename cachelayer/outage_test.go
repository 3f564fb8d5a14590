package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// checkCallByCall runs every call of DESIGN rule 10 on c, whose Redis is
// unavailable, and checks its result. strict is false in no-cache mode,
// where Get, Exists, Delete and DeletePrefix return no error.
func checkCallByCall(t *testing.T, c *Cache, strict bool) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	unavailable := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: err %v, want ErrUnavailable", what, err)
		}
	}
	quiet := func(what string, err error) {
		t.Helper()
		if strict {
			unavailable(what, err)
		} else if err != nil {
			t.Errorf("%s: err %v, want nil in no-cache mode", what, err)
		}
	}
	v, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (row, error) { return sampleRow(1), nil })
	if err != nil || v != sampleRow(1) {
		t.Errorf("Fetch: %+v %v, want the loader's value", v, err)
	}
	_, err = Fetch(ctx, c, "nf", time.Minute, func(context.Context) (row, error) { return row{}, ErrNotFound })
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch of a missing row: %v", err)
	}
	var dst row
	found, err := c.Get(ctx, "k", &dst)
	if found {
		t.Error("Get found a value")
	}
	quiet("Get", err)
	ok, err := c.Exists(ctx, "k")
	if ok {
		t.Error("Exists reported true")
	}
	quiet("Exists", err)
	quiet("Delete", c.Delete(ctx, "k"))
	// DeleteFull says whether the delete reached Redis, whatever the mode:
	// an outbox must never count a no-cache or closed cache's call as done.
	unavailable("DeleteFull", c.DeleteFull(ctx, c.FullKey("k")))
	n, err := c.DeletePrefix(ctx, "k")
	if n != 0 {
		t.Errorf("DeletePrefix deleted %d", n)
	}
	quiet("DeletePrefix", err)
	unavailable("Set", c.Set(ctx, "k", sampleRow(1), time.Minute))
	_, err = c.Incr(ctx, "rate:k", 1, time.Minute)
	unavailable("Incr", err)
	_, err = c.TTL(ctx, "k")
	unavailable("TTL", err)
	allowed, err := c.Allow(ctx, "rate:k", 10, time.Minute)
	if !allowed {
		t.Error("Allow did not fail open")
	}
	unavailable("Allow", err)
	h := c.Health(ctx)
	if h.Healthy || h.Err == "" {
		t.Errorf("Health %+v", h)
	}
	if !strict && h.Err != "cache disabled" {
		t.Errorf("Health.Err %q, want \"cache disabled\"", h.Err)
	}
	// Available follows the breaker: true while Redis fails but the
	// breaker is still closed.
	if want := !c.noCache() && !c.br.isOpen(); c.Available() != want || c.Stats().Available != want {
		t.Errorf("Available %v, want %v", c.Available(), want)
	}
}

func TestCallByCallNoCache(t *testing.T) {
	t.Parallel()
	c := New(nil, nil)
	checkCallByCall(t, c, false)
	c2, err := Open(context.Background(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCallByCall(t, c2, false)
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Fallbacks != 0 || st.RedisErrors != 0 || st.Loads != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCallByCallRedisFailing(t *testing.T) {
	t.Parallel()
	dead := fmt.Sprintf("redis://127.0.0.1:%d/0", testsvc.FreePort(t)) // nothing listens there
	t.Run("failing", func(t *testing.T) {
		t.Parallel()
		c, err := Open(context.Background(), dead, &Config{BreakerFailures: 1000})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		checkCallByCall(t, c, true)
		if st := c.Stats(); st.BreakerOpen || st.RedisErrors == 0 || st.Fallbacks != 2 || st.InvalidationFailures != 2 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("breaker-open", func(t *testing.T) {
		t.Parallel()
		c, err := Open(context.Background(), dead, &Config{BreakerFailures: 1, BreakerCooldown: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_, _ = c.Exists(context.Background(), "x") // one failure opens it
		if !c.Stats().BreakerOpen {
			t.Fatal("breaker not open")
		}
		errs := c.Stats().RedisErrors
		checkCallByCall(t, c, true)
		if st := c.Stats(); st.RedisErrors != errs || st.Fallbacks != 2 {
			t.Fatalf("Redis called while the breaker was open: stats %+v", st)
		}
	})
}

// readLoop does n Fetch calls of key, each with a loader that answers at
// once, and returns the slowest call. Any error fails t.
func readLoop(t *testing.T, c *Cache, key string, n int) time.Duration {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	var slowest time.Duration
	for i := range n {
		start := time.Now()
		v, err := Fetch(ctx, c, key, time.Minute, func(context.Context) (row, error) { return sampleRow(1), nil })
		if d := time.Since(start); d > slowest {
			slowest = d
		}
		if err != nil || v != sampleRow(1) {
			t.Fatalf("read %d failed: %+v %v", i, v, err)
		}
	}
	return slowest
}

// opBound is the longest a read may take while Redis misbehaves: OpTimeout
// plus scheduling slack for -race on a loaded 2-core machine.
const (
	testOpTimeout = 100 * time.Millisecond
	opBound       = testOpTimeout + 150*time.Millisecond
)

func TestRedisDownReadsFallBack(t *testing.T) {
	t.Parallel()
	dead := fmt.Sprintf("redis://127.0.0.1:%d/0", testsvc.FreePort(t))
	c, err := Open(context.Background(), dead, &Config{OpTimeout: testOpTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	slowest := readLoop(t, c, "k", 50)
	t.Logf("Redis down: slowest of 50 reads %v", slowest)
	if slowest > opBound {
		t.Fatalf("a read took %v, want ≤ %v", slowest, opBound)
	}
	if st := c.Stats(); !st.BreakerOpen || st.Fallbacks != 50 || st.Loads != 50 || st.RedisErrors < 5 {
		t.Fatalf("stats %+v, want breaker open after 5 errors and 50 fallbacks", st)
	}
}

func TestRedisHungBlackHole(t *testing.T) {
	t.Parallel()
	hole := testsvc.StartBlackHole(t)
	c, err := Open(context.Background(), "redis://"+hole.Addr+"/0", &Config{OpTimeout: testOpTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	slowest := readLoop(t, c, "k", 20)
	t.Logf("Redis hung (accepts, never answers): slowest of 20 reads %v", slowest)
	if slowest > opBound {
		t.Fatalf("a read took %v, want ≤ %v", slowest, opBound)
	}
	if st := c.Stats(); !st.BreakerOpen || st.Fallbacks != 20 {
		t.Fatalf("stats %+v", st)
	}
	start := time.Now()
	if h := c.Health(context.Background()); h.Healthy || time.Since(start) > time.Second+200*time.Millisecond {
		t.Fatalf("Health of a hung Redis: %+v after %v", h, time.Since(start))
	}
}

// recoveryBound is how soon after Redis returns the cache must be used
// again: BreakerCooldown (1 s) plus go-redis's redial probe (1 s), plus slack.
const recoveryBound = 3 * time.Second

// waitForHits polls reads of key until one is a hit and returns how long it
// took; every read must succeed meanwhile.
func waitForHits(t *testing.T, c *Cache, key string) time.Duration {
	t.Helper()
	start := time.Now()
	before := c.Stats().Hits
	for c.Stats().Hits == before {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("cache not used again 10 s after Redis returned: %+v", c.Stats())
		}
		readLoop(t, c, key, 1)
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	return time.Since(start)
}

func TestRedisPausedThenResumed(t *testing.T) {
	t.Parallel()
	s := testsvc.StartRedis(t)
	c, err := Open(context.Background(), s.URL(), &Config{OpTimeout: testOpTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	readLoop(t, c, "k", 3) // warm: a fill, then hits on pooled connections
	if st := c.Stats(); st.Hits != 2 {
		t.Fatalf("warm-up stats %+v", st)
	}

	s.Pause() // SIGSTOP: connections stay open, nothing answers
	slowest := readLoop(t, c, "k", 20)
	t.Logf("Redis SIGSTOPped: slowest of 20 reads %v", slowest)
	if slowest > opBound {
		t.Fatalf("a read took %v, want ≤ %v", slowest, opBound)
	}
	if !c.Stats().BreakerOpen {
		t.Fatalf("breaker not open: %+v", c.Stats())
	}

	s.Resume()
	took := waitForHits(t, c, "k")
	t.Logf("Redis resumed: cache used again after %v", took)
	if took > recoveryBound {
		t.Fatalf("recovery took %v, want ≤ %v", took, recoveryBound)
	}
	if st := c.Stats(); st.BreakerOpen || st.Recoveries != 1 || !st.Available {
		t.Fatalf("stats %+v", st)
	}
}

func TestRedisKilledMidLoadAndRestarted(t *testing.T) {
	t.Parallel()
	s := testsvc.StartRedis(t)
	c, err := Open(context.Background(), s.URL(), &Config{OpTimeout: testOpTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := ctxT(t, 30*time.Second)

	// Redis dies while a load is in flight: the fill fails, the read does not.
	started, release := make(chan struct{}), releaser(t)
	done := make(chan error, 1)
	go func() {
		v, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (row, error) {
			close(started)
			<-release.ch
			return sampleRow(1), nil
		})
		if err == nil && v != sampleRow(1) {
			err = fmt.Errorf("got %+v", v)
		}
		done <- err
	}()
	<-started
	s.Kill()
	release.do()
	if err := <-done; err != nil {
		t.Fatalf("read in flight when Redis died: %v", err)
	}

	slowest := readLoop(t, c, "k", 30)
	t.Logf("Redis killed: slowest of 30 reads %v", slowest)
	if slowest > opBound {
		t.Fatalf("a read took %v, want ≤ %v", slowest, opBound)
	}
	if !c.Stats().BreakerOpen {
		t.Fatalf("breaker not open: %+v", c.Stats())
	}

	s.Restart()
	took := waitForHits(t, c, "k")
	t.Logf("Redis restarted: cache used again after %v", took)
	if took > recoveryBound {
		t.Fatalf("recovery took %v, want ≤ %v", took, recoveryBound)
	}
	if st := c.Stats(); st.BreakerOpen || st.Recoveries < 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A cache from New on a client without ContextTimeoutEnabled gets a warning.
func TestNewWarnsWithoutContextTimeout(t *testing.T) {
	t.Parallel()
	var logged logBuffer
	rdb := testsvc.StartRedis(t).Client()
	_ = New(rdb, &Config{Logger: logged.logger()}) // has ContextTimeoutEnabled
	if logged.String() != "" {
		t.Fatalf("unexpected warning: %s", logged.String())
	}
	// Options of its own: copying the live client's would race with the
	// connection setup that writes them (go-redis maintnotifications).
	plain := redisClient(&redis.Options{Addr: rdb.Options().Addr})
	t.Cleanup(func() { _ = plain.Close() })
	_ = New(plain, &Config{Logger: logged.logger()})
	if !containsStr(logged.String(), "ContextTimeoutEnabled") {
		t.Fatalf("no warning for a client without ContextTimeoutEnabled: %q", logged.String())
	}
}

// Delete waits up to InvalidateTimeout (not OpTimeout) for a slow Redis, and
// is skipped at once while the breaker is open.
func TestDeleteUsesInvalidateTimeout(t *testing.T) {
	t.Parallel()
	s := testsvc.StartRedis(t)
	c, err := Open(context.Background(), s.URL(), &Config{
		OpTimeout: 50 * time.Millisecond, InvalidateTimeout: 400 * time.Millisecond, BreakerFailures: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := ctxT(t, 10*time.Second)
	if err := c.Delete(ctx, "k"); err != nil { // warm a connection
		t.Fatal(err)
	}
	s.Pause()
	t.Cleanup(s.Resume)
	start := time.Now()
	err = c.Delete(ctx, "k")
	took := time.Since(start)
	t.Logf("Delete on a hung Redis gave up after %v", took)
	if !errors.Is(err, ErrUnavailable) || took < 350*time.Millisecond || took > 400*time.Millisecond+opBound {
		t.Fatalf("Delete: %v after %v; want ErrUnavailable after about InvalidateTimeout", err, took)
	}
	start = time.Now()
	err = c.Delete(ctx, "k") // the breaker is open now
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > 20*time.Millisecond {
		t.Fatalf("Delete with the breaker open: %v after %v", err, time.Since(start))
	}
	if st := c.Stats(); st.InvalidationFailures != 2 || st.Invalidations != 1 || !st.BreakerOpen {
		t.Fatalf("stats %+v", st)
	}
}
