package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestFetchMissThenHit(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	var loads counter
	load := func(context.Context) (row, error) { loads.inc(); return sampleRow(1), nil }

	for i := range 3 {
		got, err := Fetch(ctx, c, "user:1", time.Minute, load)
		if err != nil || !reflect.DeepEqual(got, sampleRow(1)) {
			t.Fatalf("fetch %d: %+v, %v", i, got, err)
		}
	}
	if loads.get() != 1 {
		t.Fatalf("%d loads, want 1", loads.get())
	}
	st := c.Stats()
	if st.Hits != 2 || st.Misses != 1 || st.Loads != 1 || st.Fallbacks != 0 || !st.Available {
		t.Fatalf("stats %+v", st)
	}
	// The stored entry is header + the codec's JSON, readable in redis-cli.
	raw, err := rdb.Get(ctx, c.FullKey("user:1")).Result()
	if err != nil || raw[0] != headerValue || raw[1] != '{' {
		t.Fatalf("stored %q, %v", raw, err)
	}
	// Jitter only shortens: the TTL is within [0.9, 1] × ttl.
	pttl := rdb.PTTL(ctx, c.FullKey("user:1")).Val()
	if pttl > time.Minute || pttl < 54*time.Second-time.Second {
		t.Fatalf("ttl %v outside [54s, 60s]", pttl)
	}
}

func TestFetch1000GoroutinesOneLoad(t *testing.T) {
	t.Parallel()
	// A burst of 1000 GETs on a 20-connection pool under -race can take
	// longer than the 100 ms default; this test is about sharing, not latency.
	c, _ := realCache(t, &Config{OpTimeout: 5 * time.Second})
	ctx := ctxT(t, 20*time.Second)
	const n = 1000
	var joined atomic.Int64
	c.hookJoined = func(string) { joined.Add(1) }
	release := releaser(t)
	var loads counter
	load := func(ctx context.Context) (row, error) {
		loads.inc()
		select {
		case <-release.ch:
		case <-ctx.Done():
			return row{}, ctx.Err()
		}
		return sampleRow(2), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			got, err := Fetch(ctx, c, "cold", time.Minute, load)
			if err == nil && got != sampleRow(2) {
				err = fmt.Errorf("got %+v", got)
			}
			errs <- err
		})
	}
	waitFor(t, 15*time.Second, "1000 callers to join the flight", func() bool { return joined.Load() == n })
	release.do()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := c.Stats()
	if loads.get() != 1 || st.Loads != 1 || st.LoadsShared != n-1 || st.Misses != n {
		t.Fatalf("loads %d, stats %+v; want 1 load shared by %d", loads.get(), st, n-1)
	}
}

// Four Cache instances with separate clients, as four processes: the lease
// lets one of them load; the others wait for its fill.
func TestFetchFourInstancesOneLoad(t *testing.T) {
	t.Parallel()
	first, _ := realCache(t, &Config{LeaseWait: 10 * time.Second, OpTimeout: 5 * time.Second})
	caches := []*Cache{first}
	for range 3 {
		rdb := testsvc.Redis(t) // a client (connection pool) of its own
		caches = append(caches, cacheOn(t, rdb, &Config{Prefix: first.prefix, LeaseWait: 10 * time.Second, OpTimeout: 5 * time.Second}))
	}
	ctx := ctxT(t, 30*time.Second)
	const per = 250
	var joined, waiting atomic.Int64
	for _, c := range caches {
		c.hookJoined = func(string) { joined.Add(1) }
		c.hookLeaseWait = func(string) { waiting.Add(1) }
	}
	release := releaser(t)
	var loads atomic.Int64
	load := func(ctx context.Context) (row, error) {
		loads.Add(1)
		<-release.ch
		return sampleRow(4), nil
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for _, c := range caches {
		for range per {
			wg.Go(func() {
				if got, err := Fetch(ctx, c, "shared", time.Minute, load); err != nil || got != sampleRow(4) {
					failed.Add(1)
				}
			})
		}
	}
	waitFor(t, 20*time.Second, "all callers in flights and 3 instances waiting for the lease", func() bool {
		return joined.Load() == 4*per && waiting.Load() == 3
	})
	release.do()
	wg.Wait()
	if failed.Load() != 0 || loads.Load() != 1 {
		t.Fatalf("%d failed reads, %d loads; want 0 and 1", failed.Load(), loads.Load())
	}
	var leaseWaits int64
	for _, c := range caches {
		leaseWaits += c.Stats().LeaseWaits
	}
	if leaseWaits != 3 {
		t.Fatalf("LeaseWaits %d, want 3", leaseWaits)
	}
}

// The stale-set race of every peer: a load reads the old value, a write
// commits and invalidates, then the load tries to fill. The fill must be
// rejected, the flight must reload, and Redis must never hold the old value.
func TestStaleSetRejected(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	var db atomic.Value // the "database"
	db.Store(sampleRow(1))
	readOld := make(chan struct{})
	release := releaser(t)
	var calls atomic.Int64
	load := func(ctx context.Context) (row, error) {
		v := db.Load().(row)
		if calls.Add(1) == 1 {
			close(readOld)
			<-release.ch // the write and its invalidation happen now
		}
		return v, nil
	}
	key, full := "race", c.FullKey("race")

	// Watch Redis throughout: it must never hold the old value.
	oldEntry, _ := encodeValue(c.codec, sampleRow(1))
	stop := make(chan struct{})
	var sawOld atomic.Bool
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if s, err := rdb.Get(ctx, full).Result(); err == nil && s == string(oldEntry) {
				sawOld.Store(true)
			}
		}
	})

	const callers = 10
	results := make(chan row, callers)
	var joined atomic.Int64
	c.hookJoined = func(string) { joined.Add(1) }
	for range callers {
		go func() {
			v, err := Fetch(ctx, c, key, time.Minute, load)
			if err != nil {
				t.Error(err)
			}
			results <- v
		}()
	}
	<-readOld
	waitFor(t, 5*time.Second, "callers to join", func() bool { return joined.Load() == callers })
	db.Store(sampleRow(2)) // the write commits…
	if err := c.Delete(ctx, key); err != nil {
		t.Fatal(err)
	} // …and its invalidation completes.

	// A read that begins now must not join the old flight.
	fresh, err := Fetch(ctx, c, key, time.Minute, load)
	if err != nil || fresh != sampleRow(2) {
		t.Fatalf("read after the invalidation: %+v, %v", fresh, err)
	}
	release.do()
	for range callers {
		if v := <-results; v != sampleRow(2) {
			t.Errorf("caller of the old flight got %+v, want the new value", v)
		}
	}
	close(stop)
	watch.Wait()
	if sawOld.Load() {
		t.Fatal("Redis held the pre-write value")
	}
	if s, _ := rdb.Get(ctx, full).Result(); s == string(oldEntry) {
		t.Fatal("Redis holds the pre-write value")
	}
	if st := c.Stats(); st.StaleFillsRejected != 1 || st.Invalidations != 1 {
		t.Fatalf("stats %+v, want StaleFillsRejected 1", st)
	}
}

func TestLeaderCancelled(t *testing.T) {
	t.Parallel()
	c, _ := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	started := make(chan struct{})
	release := releaser(t)
	var loads atomic.Int64
	var joined atomic.Int64
	c.hookJoined = func(string) { joined.Add(1) }
	load := func(ctx context.Context) (row, error) {
		loads.Add(1)
		close(started)
		select {
		case <-release.ch:
			return sampleRow(3), ctx.Err() // the load's own context must still be alive
		case <-ctx.Done():
			return row{}, ctx.Err()
		}
	}
	leaderCtx, cancelLeader := context.WithCancel(ctx)
	leaderErr := make(chan error, 1)
	go func() {
		_, err := Fetch(leaderCtx, c, "k", time.Minute, load)
		leaderErr <- err
	}()
	<-started
	const waiters = 100
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range waiters {
		wg.Go(func() {
			if v, err := Fetch(ctx, c, "k", time.Minute, load); err != nil || v != sampleRow(3) {
				bad.Add(1)
			}
		})
	}
	waitFor(t, 5*time.Second, "waiters to join", func() bool { return joined.Load() == waiters+1 })
	cancelLeader()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader got %v, want context.Canceled", err)
	}
	release.do()
	wg.Wait()
	if bad.Load() != 0 || loads.Load() != 1 {
		t.Fatalf("%d waiters failed, %d loads", bad.Load(), loads.Load())
	}
	if st := c.Stats(); st.LoadsShared != waiters {
		t.Fatalf("LoadsShared %d, want %d", st.LoadsShared, waiters)
	}
}

func TestLoaderErrorSharedNotCached(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	boom := errors.New("db down")
	release := releaser(t)
	var joined atomic.Int64
	c.hookJoined = func(string) { joined.Add(1) }
	var loads atomic.Int64
	load := func(context.Context) (row, error) { loads.Add(1); <-release.ch; return row{}, boom }
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() { _, err := Fetch(ctx, c, "e", time.Minute, load); errs <- err }()
	}
	waitFor(t, 5*time.Second, "callers to join", func() bool { return joined.Load() == n })
	release.do()
	for range n {
		if err := <-errs; !errors.Is(err, boom) {
			t.Fatalf("got %v, want the loader's error", err)
		}
	}
	if loads.Load() != 1 {
		t.Fatalf("%d loads", loads.Load())
	}
	// Not cached, and the lease was released: the next read loads at once.
	if n, _ := rdb.Exists(ctx, c.FullKey("e")).Result(); n != 0 {
		t.Fatal("key left behind after a loader error")
	}
	v, err := Fetch(ctx, c, "e", time.Minute, func(context.Context) (row, error) { return sampleRow(5), nil })
	if err != nil || v != sampleRow(5) {
		t.Fatalf("%+v %v", v, err)
	}
}

func TestNegativeCaching(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, &Config{NegativeTTL: 20 * time.Second})
	ctx := ctxT(t, 10*time.Second)
	var loads atomic.Int64
	missing := fmt.Errorf("workflow 9: %w", ErrNotFound)
	load := func(context.Context) (row, error) { loads.Add(1); return row{}, missing }
	for range 3 {
		if _, err := Fetch(ctx, c, "wf:9", time.Minute, load); !errors.Is(err, ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
	}
	if loads.Load() != 1 {
		t.Fatalf("%d loads, want 1 (marker cached)", loads.Load())
	}
	if pttl := rdb.PTTL(ctx, c.FullKey("wf:9")).Val(); pttl > 20*time.Second || pttl < 17*time.Second {
		t.Fatalf("marker ttl %v", pttl)
	}
	var v row
	if found, err := c.Get(ctx, "wf:9", &v); found || !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a marker: %v %v", found, err)
	}
	if ok, err := c.Exists(ctx, "wf:9"); ok || err != nil {
		t.Fatalf("Exists of a marker: %v %v", ok, err)
	}
	if _, err := c.TTL(ctx, "wf:9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("TTL of a marker: %v", err)
	}
	if err := c.Delete(ctx, "wf:9"); err != nil {
		t.Fatal(err)
	}
	got, err := Fetch(ctx, c, "wf:9", time.Minute, func(context.Context) (row, error) { return sampleRow(9), nil })
	if err != nil || got != sampleRow(9) {
		t.Fatalf("after delete: %+v %v", got, err)
	}
}

func TestOversizeServedNotCached(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, &Config{MaxValueBytes: 64})
	ctx := ctxT(t, 10*time.Second)
	big := make([]int, 100)
	for range 2 {
		got, err := Fetch(ctx, c, "big", time.Minute, func(context.Context) ([]int, error) { return big, nil })
		if err != nil || len(got) != 100 {
			t.Fatalf("%v %v", len(got), err)
		}
	}
	if n := rdb.Exists(ctx, c.FullKey("big")).Val(); n != 0 {
		t.Fatal("oversize value (or its lease) left in Redis")
	}
	if st := c.Stats(); st.Oversize != 2 || st.Loads != 2 {
		t.Fatalf("stats %+v", st)
	}
	if err := c.Set(ctx, "big", big, time.Minute); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Set of an oversize value: %v", err)
	}
}

// Garbage, another format version and a key of another type are replaced
// by Fetch (Corrupt) and reported, not replaced, by Get.
func TestCorruptEntriesSelfHeal(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	good, _ := encodeValue(c.codec, sampleRow(8))
	setups := map[string]func(full string) error{
		"garbage":     func(full string) error { return rdb.Set(ctx, full, "\x11{not json", time.Minute).Err() },
		"raw-bytes":   func(full string) error { return rdb.Set(ctx, full, []byte{0xff, 0, 1, 2}, time.Minute).Err() },
		"old-version": func(full string) error { return rdb.Set(ctx, full, "\x21"+string(good[1:]), time.Minute).Err() },
		"wrong-type":  func(full string) error { return rdb.HSet(ctx, full, "f", "v").Err() },
		"truncated":   func(full string) error { return rdb.Set(ctx, full, good[:len(good)/2], time.Minute).Err() },
	}
	var want int64
	for name, setup := range setups {
		key := "corrupt:" + name
		full := c.FullKey(key)
		if err := setup(full); err != nil {
			t.Fatal(err)
		}
		var v row
		if found, err := c.Get(ctx, key, &v); found || err == nil {
			t.Errorf("%s: Get = %v, %v; want a decode error", name, found, err)
		}
		want++
		got, err := Fetch(ctx, c, key, time.Minute, func(context.Context) (row, error) { return sampleRow(8), nil })
		if err != nil || got != sampleRow(8) {
			t.Errorf("%s: Fetch = %+v, %v", name, got, err)
		}
		if s, err := rdb.Get(ctx, full).Result(); err != nil || s != string(good) {
			t.Errorf("%s: not healed: %q, %v", name, s, err)
		}
	}
	if st := c.Stats(); st.Corrupt != want || st.RedisErrors != 0 || st.BreakerOpen {
		t.Fatalf("stats %+v, want Corrupt %d", st, want)
	}
}

// A lease whose holder never fills (a dead process): others wait LeaseWait,
// then load without filling; the lease expires by itself after LeaseTTL.
func TestForeignLeaseWaitExhausted(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, &Config{LeaseWait: 150 * time.Millisecond})
	ctx := ctxT(t, 10*time.Second)
	lease := newLeaseToken()
	full := c.FullKey("leased")
	if err := rdb.Set(ctx, full, lease, 3*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := Fetch(ctx, c, "leased", time.Minute, func(context.Context) (row, error) { return sampleRow(6), nil })
	if err != nil || got != sampleRow(6) {
		t.Fatalf("%+v %v", got, err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("waited %v, want about LeaseWait", d)
	}
	if s := rdb.Get(ctx, full).Val(); len(s) != len(lease) || s[2:] != lease[2:] || !isMarked(s) {
		t.Fatalf("Redis holds %q: a process without the lease filled the key, or the waiter did not mark the lease", s)
	}
	if st := c.Stats(); st.LeaseWaits != 1 || st.Loads != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The holder's fill, arriving in time, is what waiters get.
	if err := rdb.Set(ctx, full, lease, 3*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	fillDone := make(chan struct{})
	c.hookLeaseWait = func(string) {
		go func() {
			defer close(fillDone)
			entry, _ := encodeValue(c.codec, sampleRow(7))
			_ = fillScript.Run(ctx, rdb, []string{full}, lease, entry, 60000, c.notes.channel).Err()
		}()
	}
	got, err = Fetch(ctx, c, "leased", time.Minute, func(context.Context) (row, error) {
		t.Error("loaded although the lease holder filled")
		return row{}, nil
	})
	<-fillDone
	if err != nil || got != sampleRow(7) {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestGetSetExistsTTL(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	var v row
	if found, err := c.Get(ctx, "u", &v); found || err != nil {
		t.Fatalf("Get of a missing key: %v %v", found, err)
	}
	if ok, err := c.Exists(ctx, "u"); ok || err != nil {
		t.Fatalf("Exists of a missing key: %v %v", ok, err)
	}
	if _, err := c.TTL(ctx, "u"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("TTL of a missing key: %v", err)
	}
	if err := c.Set(ctx, "u", sampleRow(1), time.Minute); err != nil {
		t.Fatal(err)
	}
	if found, err := c.Get(ctx, "u", &v); !found || err != nil || v != sampleRow(1) {
		t.Fatalf("Get: %v %v %+v", found, err, v)
	}
	if ok, err := c.Exists(ctx, "u"); !ok || err != nil {
		t.Fatalf("Exists: %v %v", ok, err)
	}
	if ttl, err := c.TTL(ctx, "u"); err != nil || ttl <= 59*time.Second || ttl > time.Minute {
		t.Fatalf("TTL %v %v", ttl, err)
	}
	// Fetch reads what Set wrote.
	got, err := Fetch(ctx, c, "u", time.Minute, func(context.Context) (row, error) { t.Error("loaded"); return row{}, nil })
	if err != nil || got != sampleRow(1) {
		t.Fatalf("%+v %v", got, err)
	}
	// A lease is neither a value nor a TTL.
	if err := rdb.Set(ctx, c.FullKey("l"), newLeaseToken(), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if found, err := c.Get(ctx, "l", &v); found || err != nil {
		t.Fatalf("Get of a lease: %v %v", found, err)
	}
	if ok, _ := c.Exists(ctx, "l"); ok {
		t.Fatal("Exists of a lease")
	}
	if _, err := c.TTL(ctx, "l"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("TTL of a lease: %v", err)
	}
	if err := rdb.Set(ctx, c.FullKey("forever"), "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if ttl, err := c.TTL(ctx, "forever"); ttl != NoExpiry || err != nil {
		t.Fatalf("TTL without expiry: %v %v", ttl, err)
	}
	// Delete of several keys and DeleteFull.
	if err := c.Delete(ctx, "u", "l", "nothing"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteFull(ctx, c.FullKey("forever")); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, c.FullKey("u"), c.FullKey("l"), c.FullKey("forever")).Val(); n != 0 {
		t.Fatalf("%d keys left", n)
	}
	if st := c.Stats(); st.Invalidations != 4 || st.InvalidationFailures != 0 {
		t.Fatalf("stats %+v", st)
	}
	if err := c.DeleteFull(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestHealthAndClose(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	if h := c.Health(ctx); !h.Healthy || h.Latency <= 0 || h.Err != "" {
		t.Fatalf("health %+v", h)
	}
	// Close waits for a fill in progress.
	started, release := make(chan struct{}), releaser(t)
	fetched := make(chan error, 1)
	go func() {
		_, err := Fetch(ctx, c, "slow", time.Minute, func(context.Context) (row, error) {
			close(started)
			<-release.ch
			return sampleRow(1), nil
		})
		fetched <- err
	}()
	<-started
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a flight was filling")
	case <-time.After(50 * time.Millisecond): // a negative check: Close must still be waiting
	}
	release.do()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal("Close of a cache from New closed the caller's client:", err)
	}
	// Closed: no-cache mode.
	if c.Available() {
		t.Fatal("available after Close")
	}
	v, err := Fetch(ctx, c, "slow", time.Minute, func(context.Context) (row, error) { return sampleRow(2), nil })
	if err != nil || v != sampleRow(2) {
		t.Fatalf("after Close: %+v %v", v, err)
	}
}

// A flight whose fill was rejected answers with what it then finds in
// Redis — here a value written by another process after a load that said
// "not found" — and not with its own stale outcome.
func TestRejectedFillThenFoundInRedis(t *testing.T) {
	t.Parallel()
	c, _ := realCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	started, release := make(chan struct{}), releaser(t)
	done := make(chan error, 1)
	var got row
	go func() {
		var err error
		got, err = Fetch(ctx, c, "wf:2", time.Minute, func(context.Context) (row, error) {
			close(started)
			<-release.ch
			return row{}, ErrNotFound // what the database said before the write
		})
		done <- err
	}()
	<-started
	if err := c.Delete(ctx, "wf:2"); err != nil { // the write's invalidation…
		t.Fatal(err)
	}
	if err := c.Set(ctx, "wf:2", sampleRow(2), time.Minute); err != nil { // …and another process's fill
		t.Fatal(err)
	}
	release.do()
	if err := <-done; err != nil || got != sampleRow(2) {
		t.Fatalf("got %+v, %v; want the value in Redis", got, err)
	}
	if st := c.Stats(); st.StaleFillsRejected != 1 || st.Loads != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFetchWithNegativeTTL(t *testing.T) {
	t.Parallel()
	c, rdb := realCache(t, &Config{NegativeTTL: 20 * time.Second})
	ctx := ctxT(t, 10*time.Second)
	missing := func(context.Context) (row, error) { return row{}, ErrNotFound }
	opts := FetchOptions{TTL: time.Minute, NegativeTTL: 5 * time.Second}
	if _, err := FetchWith(ctx, c, "wf:5", opts, missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	if pttl := rdb.PTTL(ctx, c.FullKey("wf:5")).Val(); pttl > 5*time.Second || pttl < 4*time.Second {
		t.Fatalf("marker ttl %v, want the call's 5 s (minus jitter), not the config's 20 s", pttl)
	}
	if _, err := FetchWith(ctx, c, "wf:6", FetchOptions{TTL: time.Minute, NegativeTTL: -time.Second}, missing); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative NegativeTTL: %v, want ErrInvalid", err)
	}
}

// TestHitsSurviveRefusedWrites: a Redis at maxmemory with noeviction
// refuses every write, even a SET NX that would set nothing; hits are still
// served from Redis (by a GET), and a miss still gets its loader's value.
func TestHitsSurviveRefusedWrites(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, refusal string
		config        [][2]string
	}{
		{"maxmemory", "OOM", [][2]string{{"maxmemory-policy", "noeviction"}, {"maxmemory", "1"}}},
		{"min-replicas-to-write", "NOREPLICAS", [][2]string{{"min-replicas-to-write", "1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hitsSurviveRefusedWrites(t, tc.refusal, tc.config)
		})
	}
}

// hitsSurviveRefusedWrites: once Redis refuses writes (config makes it
// answer refusal), hits are still served from Redis and misses load.
func hitsSurviveRefusedWrites(t *testing.T, refusal string, config [][2]string) {
	srv := testsvc.StartRedis(t)
	rdb := srv.Client()
	c := cacheOn(t, rdb, nil)
	ctx := ctxT(t, 10*time.Second)
	if err := c.Set(ctx, "k", sampleRow(1), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, kv := range config {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.Set(ctx, "probe", "x", time.Minute).Err(); err == nil || !containsStr(err.Error(), refusal) {
		t.Fatalf("a write: %v, want a %s error", err, refusal)
	}
	v, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (row, error) { t.Error("loaded a cached key"); return row{}, nil })
	if err != nil || v != sampleRow(1) {
		t.Fatalf("hit: %+v %v", v, err)
	}
	if st := c.Stats(); st.Hits != 1 || st.RedisErrors != 0 || st.Fallbacks != 0 {
		t.Fatalf("stats after the hit %+v", st)
	}
	v, err = Fetch(ctx, c, "cold", time.Minute, func(context.Context) (row, error) { return sampleRow(2), nil })
	if err != nil || v != sampleRow(2) {
		t.Fatalf("miss: %+v %v", v, err)
	}
}
