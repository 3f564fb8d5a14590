package cachelayer

import (
	"context"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// cmdCounter is a go-redis hook that records every command a client sends
// and every round trip (a command, or a pipeline of them) — except the
// handshake go-redis pipelines on each new connection (HELLO, CLIENT
// SETINFO), which belongs to no call.
type cmdCounter struct {
	mu    sync.Mutex
	names []string
	trips int
}

func (h *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "hello" || cmd.Name() == "client" {
			return next(ctx, cmd) // a connection's handshake
		}
		h.mu.Lock()
		h.trips++
		h.names = append(h.names, cmd.Name())
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (h *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return c.Name() != "hello" && c.Name() != "client" }) {
			return next(ctx, cmds) // a connection's handshake
		}
		h.mu.Lock()
		h.trips++
		for _, cmd := range cmds {
			h.names = append(h.names, cmd.Name())
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// take returns the commands and round trips recorded since the last take.
func (h *cmdCounter) take() (names []string, trips int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	names, trips = h.names, h.trips
	h.names, h.trips = nil, 0
	return names, trips
}

// countedCache returns a Cache on a client of its own whose commands h
// counts, with the read path's scripts already in Redis's script cache (so
// that no EVALSHA is retried as EVAL).
func countedCache(t *testing.T, cfg *Config) (*Cache, *cmdCounter) {
	t.Helper()
	rdb := testsvc.Redis(t)
	ctx := ctxT(t, 10*time.Second)
	for _, s := range []*redis.Script{stepScript, fillScript, releaseScript, renewScript} {
		if err := s.Load(ctx, rdb).Err(); err != nil {
			t.Fatal(err)
		}
	}
	h := &cmdCounter{}
	rdb.AddHook(h)
	c := cacheOn(t, rdb, cfg)
	// New looks at the topology once in the background (one INFO): not a
	// read's round trip, so wait for it before counting.
	waitFor(t, 10*time.Second, "the first topology check", func() bool {
		return c.topo == nil || (c.topo.lastCheck.Load() != 0 && !c.topo.checking.Load())
	})
	_, _ = h.take()
	return c, h
}

// TestHitIsOneCommand: a hit is one command in one round trip.
func TestHitIsOneCommand(t *testing.T) {
	t.Parallel()
	c, h := countedCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	if err := c.Set(ctx, "k", sampleRow(1), time.Minute); err != nil {
		t.Fatal(err)
	}
	_, _ = h.take()
	for range 3 {
		v, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (row, error) { t.Error("loaded"); return row{}, nil })
		if err != nil || v != sampleRow(1) {
			t.Fatalf("%+v %v", v, err)
		}
		if names, trips := h.take(); trips != 1 || len(names) != 1 {
			t.Fatalf("a hit sent %v in %d round trips, want 1 command in 1", names, trips)
		}
	}
	// A cached not-found marker is a hit too.
	nf := func(context.Context) (row, error) { return row{}, ErrNotFound }
	_, _ = Fetch(ctx, c, "nf", time.Minute, nf)
	_, _ = h.take()
	if _, err := Fetch(ctx, c, "nf", time.Minute, nf); err == nil {
		t.Fatal("marker not returned")
	}
	if names, trips := h.take(); trips != 1 {
		t.Fatalf("a marker hit sent %v in %d round trips", names, trips)
	}
	if st := c.Stats(); st.Hits != 4 || st.Loads != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestMissIsTwoRoundTripsAndOneLoad: the read that finds the key empty
// also takes the lease, so a miss is that read, the load and the fill.
func TestMissIsTwoRoundTripsAndOneLoad(t *testing.T) {
	t.Parallel()
	c, h := countedCache(t, nil)
	ctx := ctxT(t, 10*time.Second)
	for i, load := range []func(context.Context) (row, error){
		func(context.Context) (row, error) { return sampleRow(1), nil },
		func(context.Context) (row, error) { return row{}, ErrNotFound }, // a marker is filled the same way
	} {
		var loads atomic.Int64
		key := []string{"value", "missing"}[i]
		_, _ = Fetch(ctx, c, key, time.Minute, func(ctx context.Context) (row, error) { loads.Add(1); return load(ctx) })
		names, trips := h.take()
		if trips != 2 || loads.Load() != 1 || !slices.Equal(names, []string{"set", "evalsha"}) {
			t.Fatalf("%s: a miss sent %v in %d round trips with %d loads, want [set evalsha] in 2 with 1 load", key, names, trips, loads.Load())
		}
		requireFilled(ctx, t, c, key)
		_, _ = h.take()
	}
}

func requireFilled(ctx context.Context, t *testing.T, c *Cache, key string) {
	t.Helper()
	s, err := c.rdb.Get(ctx, c.FullKey(key)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if kind, _ := classify(s); kind != entryValue && kind != entryNotFound {
		t.Fatalf("%s holds %q, not a filled entry", key, s)
	}
}

// TestLeaseWaitDoesNotPoll: process B waits for process A's lease while A's
// load is held across several lease renewals. B's commands while it waits
// do not grow with the wait: its read, one mark, and one read after A's fill
// woke it.
func TestLeaseWaitDoesNotPoll(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 30*time.Second)
	prefix := testsvc.Prefix(t)
	cfg := &Config{Prefix: prefix, LeaseTTL: 150 * time.Millisecond, LeaseWait: 20 * time.Second, LoadTimeout: 20 * time.Second}
	a := cacheOn(t, testsvc.Redis(t), cfg)
	b, h := countedCache(t, cfg)

	renewed := make(chan struct{}, 100)
	a.hookLeaseRenewed = func(string) { renewed <- struct{}{} }
	held := releaser(t)
	loading := make(chan struct{})
	load := func(context.Context) (row, error) { close(loading); <-held.ch; return sampleRow(1), nil }
	aDone := fetchAsync(ctx, t, a, "k", load)
	<-loading

	waiting := make(chan struct{})
	b.hookLeaseWait = func(string) { close(waiting) }
	bDone := fetchAsync(ctx, t, b, "k", func(context.Context) (row, error) { t.Error("B loaded"); return row{}, nil })
	<-waiting
	waitFor(t, 10*time.Second, "B to mark A's lease", func() bool {
		s, _ := a.rdb.Get(ctx, a.FullKey("k")).Result()
		return isMarked(s)
	})
	namesBefore, before := h.take()
	// Let B wait through six renewals of A's lease (≥ 6 × 50 ms): a polling
	// waiter would send a GET every 5-50 ms meanwhile.
	for range 6 {
		<-renewed
	}
	names, during := h.take()
	if during != 0 {
		t.Fatalf("B sent %v while it waited", names)
	}
	held.do()
	if v := <-aDone; v != sampleRow(1) {
		t.Fatalf("A got %+v", v)
	}
	if v := <-bDone; v != sampleRow(1) {
		t.Fatalf("B got %+v", v)
	}
	names, after := h.take()
	if before != 2 || after != 1 {
		t.Fatalf("B: %d round trips before its wait (want 2: read, mark: %v), %d after (want 1: %v)", before, namesBefore, after, names)
	}
	if st := b.Stats(); st.LeaseWaits != 1 || st.Loads != 0 {
		t.Fatalf("B stats %+v", st)
	}
}

// TestLeaseWaitWakeLatency prints how long a waiting process takes from the
// holder's fill to its answer (p50, p99 over a few dozen waits); it asserts
// only that every waiter got the filled value without loading.
func TestLeaseWaitWakeLatency(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("measures 40 lease waits")
	}
	ctx := ctxT(t, 60*time.Second)
	prefix := testsvc.Prefix(t)
	cfg := &Config{Prefix: prefix, LeaseWait: 10 * time.Second}
	a := cacheOn(t, testsvc.Redis(t), cfg)
	b := cacheOn(t, testsvc.Redis(t), cfg)
	var filledAt atomic.Int64
	a.hookFilled = func(string) { filledAt.Store(time.Now().UnixNano()) }
	const rounds = 40
	lat := make([]time.Duration, 0, rounds)
	for i := range rounds {
		key := "wake:" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		held := releaser(t)
		loading := make(chan struct{})
		aDone := fetchAsync(ctx, t, a, key, func(context.Context) (row, error) { close(loading); <-held.ch; return sampleRow(int64(i)), nil })
		<-loading
		bDone := fetchAsync(ctx, t, b, key, func(context.Context) (row, error) { t.Error("B loaded"); return row{}, nil })
		waitFor(t, 10*time.Second, "B to mark the lease", func() bool {
			s, _ := a.rdb.Get(ctx, a.FullKey(key)).Result()
			return isMarked(s)
		})
		held.do()
		v := <-bDone
		answered := time.Now()
		if v != sampleRow(int64(i)) {
			t.Fatalf("B got %+v", v)
		}
		<-aDone
		lat = append(lat, answered.Sub(time.Unix(0, filledAt.Load())))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("fill → waiting process's answer over %d waits: p50 %v, p99 %v, max %v (LeaseWait re-check %v)",
		rounds, lat[rounds/2], lat[rounds*99/100], lat[rounds-1], b.leaseRecheck())
	if st := b.Stats(); st.Loads != 0 || st.LeaseWaits != rounds {
		t.Fatalf("B stats %+v", st)
	}
}

// TestClusterLeaseWaitIsWoken: on a Redis Cluster the holder's fill (a
// script on the key's master) wakes a waiting process subscribed on
// whichever node: plain PUBLISH reaches every node. The waiter's re-check
// is a minute away, so only the notification can answer it in time.
func TestClusterLeaseWaitIsWoken(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-master Redis Cluster")
	}
	cluster := testsvc.StartCluster(t, 3)
	cfg := &Config{Prefix: "ghl:", OpTimeout: 2 * time.Second, LeaseWait: 4 * time.Minute, LoadTimeout: time.Minute}
	a := New(cluster.Client(), cfg)
	b := New(cluster.Client(), cfg)
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	ctx := ctxT(t, 60*time.Second)
	for i := range 3 { // keys on different masters
		key := "credits:" + string(rune('0'+i)) + ":enrichment"
		held := releaser(t)
		loading := make(chan struct{})
		aDone := fetchAsync(ctx, t, a, key, func(context.Context) (row, error) { close(loading); <-held.ch; return sampleRow(int64(i)), nil })
		<-loading
		bDone := fetchAsync(ctx, t, b, key, func(context.Context) (row, error) { t.Error("B loaded"); return row{}, nil })
		waitFor(t, 20*time.Second, "B to mark the lease", func() bool {
			s, _ := a.rdb.Get(ctx, a.FullKey(key)).Result()
			return isMarked(s)
		})
		held.do()
		select {
		case v := <-bDone:
			if v != sampleRow(int64(i)) {
				t.Fatalf("B got %+v", v)
			}
		case <-time.After(30 * time.Second): // the re-check is 60 s away
			t.Fatal("the fill did not wake the waiting process")
		}
		<-aDone
	}
	if st := b.Stats(); st.Loads != 0 || st.LeaseWaits != 3 || st.RedisErrors != 0 {
		t.Fatalf("B stats %+v", st)
	}
}

// TestLeaseWaitAfterDeleteOfMarkedLease: an invalidation deletes the lease
// a waiter had marked, so the holder's reload takes a fresh lease and its
// fill announces nothing; the waiter's slow re-check still answers it, with
// the value loaded after the invalidation.
func TestLeaseWaitAfterDeleteOfMarkedLease(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 30*time.Second)
	prefix := testsvc.Prefix(t)
	cfg := &Config{Prefix: prefix, LeaseWait: 2 * time.Second}
	a := cacheOn(t, testsvc.Redis(t), cfg)
	b := cacheOn(t, testsvc.Redis(t), cfg)
	writer := cacheOn(t, testsvc.Redis(t), cfg)

	var source atomic.Int64
	source.Store(1)
	held := releaser(t)
	loading := make(chan struct{}, 1)
	var aLoads atomic.Int64
	aDone := fetchAsync(ctx, t, a, "k", func(context.Context) (row, error) {
		v := sampleRow(source.Load())
		if aLoads.Add(1) == 1 {
			loading <- struct{}{}
			<-held.ch
		}
		return v, nil
	})
	<-loading
	bDone := fetchAsync(ctx, t, b, "k", func(context.Context) (row, error) { return sampleRow(source.Load()), nil })
	waitFor(t, 10*time.Second, "B to mark A's lease", func() bool {
		s, _ := a.rdb.Get(ctx, a.FullKey("k")).Result()
		return isMarked(s)
	})
	source.Store(2)                                 // a write commits...
	if err := writer.Delete(ctx, "k"); err != nil { // ...and invalidates, marked lease and all
		t.Fatal(err)
	}
	held.do()
	if v := <-aDone; v != sampleRow(2) {
		t.Fatalf("A got %+v, want the reload's row 2", v)
	}
	if v := <-bDone; v != sampleRow(2) {
		t.Fatalf("B got %+v, want row 2 (it began before the write, but its wait must end with what the key holds after)", v)
	}
	if st := a.Stats(); st.StaleFillsRejected != 1 || st.Loads != 2 {
		t.Fatalf("A stats %+v", st)
	}
	requireHolds(ctx, t, a, "k", sampleRow(2), "after the reload")
}

// TestSlowSubscriptionStillWakesTheWaiter: the first lease wait of a
// process subscribes to fill notifications, and on a busy machine the new
// connection can take longer than OpTimeout. The waiter gives it up to
// half its LeaseWait rather than falling back to slow re-checks (a minute
// / 4 here, past its context): the holder's fill then wakes it.
func TestSlowSubscriptionStillWakesTheWaiter(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 30*time.Second)
	prefix := testsvc.Prefix(t)
	a := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})
	var slow atomic.Bool
	opts := *testsvc.Redis(t).Options()
	addr := opts.Addr
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if slow.Load() {
				time.Sleep(300 * time.Millisecond) // a dial on a saturated machine
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}})
	t.Cleanup(func() { _ = rdb.Close() })
	b := cacheOn(t, rdb, &Config{Prefix: prefix, OpTimeout: 50 * time.Millisecond, LeaseWait: time.Minute})
	if err := rdb.Ping(ctx).Err(); err != nil { // a pooled connection for b's reads
		t.Fatal(err)
	}
	slow.Store(true) // only the subscription dials from here on

	held := releaser(t)
	loading := make(chan struct{})
	aDone := fetchAsync(ctx, t, a, "k", func(context.Context) (row, error) {
		close(loading)
		<-held.ch
		return sampleRow(1), nil
	})
	<-loading
	bDone := fetchAsync(ctxT(t, 10*time.Second), t, b, "k", func(context.Context) (row, error) { return sampleRow(9), nil })
	waitFor(t, 10*time.Second, "B to mark A's lease", func() bool {
		s, _ := a.rdb.Get(ctx, a.FullKey("k")).Result()
		return isMarked(s)
	})
	held.do()
	if v := <-aDone; v != sampleRow(1) {
		t.Fatalf("A got %+v", v)
	}
	if v := <-bDone; v != sampleRow(1) {
		t.Fatalf("B got %+v, want A's fill, woken by its notification", v)
	}
}
