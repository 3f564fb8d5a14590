package integration_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// nodeHits counts, per node address, the reads (GET, or cachelayer's SET
// NX GET) a cluster client's nodes answered without error (hits and misses
// alike: Redis served the read).
type nodeHits struct {
	mu sync.Mutex
	n  map[string]*atomic.Int64
}

func (h *nodeHits) counter(addr string) *atomic.Int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]*atomic.Int64{}
	}
	if h.n[addr] == nil {
		h.n[addr] = &atomic.Int64{}
	}
	return h.n[addr]
}

type getHook struct{ n *atomic.Int64 }

func (getHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h getHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if isRead(cmd) && (err == nil || err == redis.Nil) {
			h.n.Add(1)
		}
		return err
	}
}

// isRead reports whether cmd reads a key: GET, or SET … GET (cachelayer's
// read that also takes a lease).
func isRead(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "get":
		return true
	case "set":
		for _, a := range cmd.Args()[3:] {
			if s, ok := a.(string); ok && strings.EqualFold(s, "get") {
				return true
			}
		}
	}
	return false
}

func (getHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// failoverClient is a cluster client configured as cachelayer.Open
// configures its own, whose nodes count the GETs they serve in hits.
func failoverClient(t *testing.T, cluster *testsvc.RedisCluster, hits *nodeHits) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		// A copy per client: go-redis appends to its Addrs slice, so two
		// clients sharing one backing array race (the race detector says so).
		Addrs:                      slices.Clone(cluster.Addrs),
		ContextTimeoutEnabled:      true,
		DialTimeout:                250 * time.Millisecond,
		DialerRetries:              1,
		ReadTimeout:                time.Second,
		WriteTimeout:               time.Second,
		MaxRetries:                 1,
		MaxRedirects:               2,
		DisableIdentity:            true,
		ClusterStateReloadInterval: cachelayer.RecommendedClusterStateReloadInterval,
	})
	cc.OnNewNode(func(node *redis.Client) { node.AddHook(getHook{n: hits.counter(node.Options().Addr)}) })
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// TestClusterFailoverUnderLoad: on a cluster of 3 masters with a replica
// each, two instances of credits.Cached serve 16 readers and 2 writers; one
// master is killed (kill -9) and its replica takes over by itself. No read
// fails; no read of a key on a healthy master returns a version older than
// a write of that user that had returned before the read began; the healthy
// masters serve GETs in every 500 ms window throughout; the failed shard's
// keys are read from Redis again after the promotion; and 3 s after the load
// stops no key in Redis is stale. Not parallel: the outbox is shared by
// every instance on this database (see TestRedisKilledMidLoad).
func TestClusterFailoverUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster")
	}
	ctx := testContext(t, 90*time.Second)
	cluster := testsvc.StartClusterReplicas(t, 3, 1)
	var hitsA, hitsB nodeHits
	prefix := "failover:"
	// OpTimeout well above a loaded test machine's Redis latency: a healthy
	// master's read that times out puts that read in the documented
	// degraded mode (it may share a load that began before it), which is
	// not what this test is about. The dead master refuses connections at
	// once, so its reads fail fast anyway.
	cfg := &cachelayer.Config{BreakerCooldown: 250 * time.Millisecond, OpTimeout: time.Second}
	a := newInstance(t, prefix, failoverClient(t, cluster, &hitsA), cfg)
	b := newInstance(t, prefix, failoverClient(t, cluster, &hitsB), cfg)
	admin := cluster.Client()

	// Users, 16 on each master, and the master of each one's key.
	const perMaster = 16
	var users []int64
	shard := map[int64]string{}
	count := map[string]int{}
	for len(users) < perMaster*len(cluster.Addrs) {
		u := testsvc.NewID()
		node, err := admin.MasterForKey(ctx, a.cache.FullKey(credits.Key(u, "enrichment")))
		require.NoError(t, err)
		addr := node.Options().Addr
		if count[addr] == perMaster {
			continue
		}
		count[addr]++
		shard[u] = addr
		users = append(users, u)
		_, err = a.credits.Add(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 1_000_000})
		require.NoError(t, err)
	}
	dead := cluster.Addrs[0]
	healthy := cluster.Addrs[1:]
	var deadUsers []int64
	for _, u := range users {
		if shard[u] == dead {
			deadUsers = append(deadUsers, u)
		}
	}
	require.NotEmpty(t, deadUsers)
	replica := cluster.ReplicaOf(dead)

	var (
		mu                  sync.Mutex
		acked               = map[int64]int64{} // user → newest version a returned write saw
		reads, writes       atomic.Int64
		failures            atomic.Int64
		staleHealthy        atomic.Int64
		staleDead           atomic.Int64
		lastStaleDead       atomic.Int64 // unix nanos of the last stale read on the failed shard
		stop                = make(chan struct{})
		wg                  sync.WaitGroup
		instances           = []*instance{a, b}
		firstErr            atomic.Pointer[error]
		recordErr           = func(err error) { firstErr.CompareAndSwap(nil, &err); failures.Add(1) }
		readersPerInstance  = 8
		writersPerInstances = 1
	)
	for i := range 2 * readersPerInstance {
		inst := instances[i%2]
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				u := users[rng.IntN(len(users))]
				mu.Lock()
				minVer := acked[u]
				mu.Unlock()
				bal, err := inst.credits.Balance(ctx, u, "enrichment")
				reads.Add(1)
				switch {
				case err != nil:
					recordErr(err)
				case bal.Version < minVer && shard[u] == dead:
					staleDead.Add(1)
					lastStaleDead.Store(time.Now().UnixNano())
				case bal.Version < minVer:
					staleHealthy.Add(1)
					t.Logf("stale read of user %d (master %s) on instance %d: version %d < %d; stats %+v",
						u, shard[u], i%2, bal.Version, minVer, inst.cache.Stats())
				}
			}
		})
	}
	for i := range 2 * writersPerInstances {
		inst := instances[i%2]
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				u := users[rng.IntN(len(users))]
				bal, err := inst.credits.Deduct(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 1})
				writes.Add(1)
				if err != nil {
					recordErr(err)
					continue
				}
				mu.Lock()
				acked[u] = max(acked[u], bal.Version)
				mu.Unlock()
				time.Sleep(2 * time.Millisecond) // pacing of the workload, not synchronisation
			}
		})
	}

	// Healthy masters must serve GETs in every window from the kill on.
	sample := func() map[string]int64 {
		m := map[string]int64{}
		for _, addr := range healthy {
			m[addr] = hitsA.counter(addr).Load() + hitsB.counter(addr).Load()
		}
		return m
	}
	waitCount := func(c *atomic.Int64, n int64) {
		target := c.Load() + n
		for c.Load() < target {
			require.NoError(t, ctx.Err())
			time.Sleep(5 * time.Millisecond) // polling with the test's deadline
		}
	}
	waitCount(&reads, 2000)
	waitCount(&writes, 50)

	dist := map[string]int{}
	for _, u := range users {
		dist[shard[u]]++
	}
	t.Logf("users per master %v; dead %s, healthy %v, GETs before the kill a=%v", dist, dead, healthy, func() map[string]int64 {
		m := map[string]int64{}
		for _, addr := range append(append([]string{}, cluster.Addrs...), replica.Addr) {
			m[addr] = hitsA.counter(addr).Load()
		}
		return m
	}())
	cluster.Server(dead).Kill()
	killed := time.Now()
	windows, emptyWindows := 0, 0
	prev := sample()
	promoted := make(chan struct{})
	go func() {
		defer close(promoted)
		cluster.WaitPromoted(replica.Addr, 30*time.Second)
	}()
	var promotedAt, replicaServed time.Time
	servedBoth := func() bool {
		return hitsA.counter(replica.Addr).Load() > 0 && hitsB.counter(replica.Addr).Load() > 0
	}
	for promotedAt.IsZero() || time.Since(promotedAt) < 2*time.Second {
		select {
		case <-promoted:
			promotedAt, promoted = time.Now(), nil
			continue
		case <-time.After(500 * time.Millisecond): // the sampling window
		}
		require.NoError(t, ctx.Err())
		now := sample()
		windows++
		for _, addr := range healthy {
			if now[addr] == prev[addr] {
				emptyWindows++
				t.Errorf("healthy master %s served no GET in window %d after the kill", addr, windows)
			}
		}
		prev = now
		if !promotedAt.IsZero() && replicaServed.IsZero() && servedBoth() {
			replicaServed = time.Now()
		}
	}
	t.Logf("replica promoted %v after the kill", promotedAt.Sub(killed).Round(time.Millisecond))

	// The failed shard's keys come back to Redis (reads served by the
	// promoted replica) on both instances.
	deadHits0 := hitsA.counter(replica.Addr).Load() + hitsB.counter(replica.Addr).Load()
	require.Eventually(t, servedBoth, 15*time.Second, 10*time.Millisecond, "reads of the failed shard served by the promoted replica")
	if replicaServed.IsZero() {
		replicaServed = time.Now()
	}
	// Issue 10's bound (sampled every 500 ms): the failed shard's keys are
	// read from Redis again within 5 s of the promotion.
	t.Logf("the promoted replica served both instances' reads within %v of the promotion", replicaServed.Sub(promotedAt).Round(time.Millisecond))
	require.Less(t, replicaServed.Sub(promotedAt), 5*time.Second, "reads of the failed shard back in Redis within 5 s of the promotion")
	waitCount(&reads, 1000)
	close(stop)
	wg.Wait()

	if err := firstErr.Load(); err != nil {
		t.Errorf("first failure: %v", *err)
	}
	require.Zero(t, failures.Load(), "0 failed reads or writes")
	require.Zero(t, staleHealthy.Load(), "0 stale reads of keys on healthy masters")
	assert.Zero(t, emptyWindows)
	if last := lastStaleDead.Load(); last != 0 {
		// The failed shard's keys whose invalidations failed during the
		// outage are stale until the sweep after the promotion, which must
		// come within issue 10's 2 s.
		after := time.Unix(0, last).Sub(promotedAt)
		t.Logf("the last stale read on the failed shard came %v after the promotion", after.Round(time.Millisecond))
		require.Less(t, after, 2*time.Second, "no stale read on the failed shard later than 2 s after the promotion")
	}
	stA, stB := a.cache.Stats(), b.cache.Stats()
	t.Logf("failover: %d reads, %d writes, %d stale reads on the failed shard; GETs on the promoted replica %d; "+
		"fallbacks a=%d b=%d; epochs a=%d b=%d", reads.Load(), writes.Load(), staleDead.Load(),
		hitsA.counter(replica.Addr).Load()+hitsB.counter(replica.Addr).Load()-deadHits0,
		stA.Fallbacks, stB.Fallbacks, a.cache.TopologyEpoch(), b.cache.TopologyEpoch())

	// 3 s after the load stopped, nothing cached is stale.
	quiet := time.Now()
	store := credits.NewStore(testsvc.Pool(t))
	time.Sleep(time.Until(quiet.Add(3 * time.Second))) // the promise is about this moment
	stale := 0
	for _, u := range users {
		want, err := store.Balance(ctx, u, "enrichment")
		require.NoError(t, err)
		var cached credits.Balance
		found, err := a.cache.Get(ctx, credits.Key(u, "enrichment"), &cached)
		require.NoError(t, err)
		if found && cached.Version != want.Version {
			stale++
			t.Errorf("user %d (master %s): Redis holds version %d, Postgres %d", u, shard[u], cached.Version, want.Version)
		}
	}
	require.Zero(t, stale, "0 stale keys 3 s after the load stopped")
}

// TestClusterFailoverLostDeleteRepaired: an invalidation the master
// acknowledged without a replica's confirmation (InvalidateReplicas < 0:
// no WAIT) is lost when the master dies and its cut-off replica takes over
// with the old value; the topology epoch changes, and the outbox sweeper
// deletes the keys of recent invalidations again, so the stale value is
// gone within seconds rather than at its TTL.
func TestClusterFailoverLostDeleteRepaired(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster")
	}
	ctx := testContext(t, 60*time.Second)
	cluster := testsvc.StartClusterReplicas(t, 3, 1)
	var hitsA, hitsB nodeHits
	prefix := "lostdelete:"
	cfg := &cachelayer.Config{BreakerCooldown: 100 * time.Millisecond, InvalidateReplicas: -1}
	a := newInstance(t, prefix, failoverClient(t, cluster, &hitsA), cfg)
	b := newInstance(t, prefix, failoverClient(t, cluster, &hitsB), cfg)
	admin := cluster.Client()

	master := cluster.Servers[0]
	replica := cluster.ReplicaOf(master.Addr)
	var u int64
	for {
		u = testsvc.NewID()
		node, err := admin.MasterForKey(ctx, a.cache.FullKey(credits.Key(u, "enrichment")))
		require.NoError(t, err)
		if node.Options().Addr == master.Addr {
			break
		}
	}
	_, err := a.credits.Add(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 100})
	require.NoError(t, err)
	old, err := b.credits.Balance(ctx, u, "enrichment") // cached in Redis
	require.NoError(t, err)
	master.WaitReplicasOnline(1, 10*time.Second) // the replica holds the cached value

	// Cut the replica off, write: the master acknowledges the UNLINK alone.
	replica.Pause()
	require.NoError(t, master.Client().Do(ctx, "CLIENT", "KILL", "TYPE", "replica").Err())
	now, err := a.credits.Deduct(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 1})
	require.NoError(t, err)
	require.Greater(t, now.Version, old.Version)
	require.Eventually(t, func() bool {
		st, err := a.credits.OutboxStats(ctx)
		return err == nil && st.Depth == 0
	}, 5*time.Second, 10*time.Millisecond, "the invalidation was acknowledged and its row removed")

	epochA, epochB := a.cache.TopologyEpoch(), b.cache.TopologyEpoch()
	master.Kill()
	replica.Resume()
	cluster.Promote(replica, 20*time.Second)
	n, err := replica.Client().Exists(ctx, a.cache.FullKey(credits.Key(u, "enrichment"))).Result()
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "the promoted replica holds the old value: the acknowledged delete was lost")
	require.Eventually(t, func() bool {
		return a.cache.TopologyEpoch() != epochA && b.cache.TopologyEpoch() != epochB
	}, 15*time.Second, 10*time.Millisecond, "both instances see a new topology epoch")
	require.Eventually(t, func() bool {
		bal, err := b.credits.Balance(ctx, u, "enrichment")
		return err == nil && bal.Version == now.Version
	}, 5*time.Second, 10*time.Millisecond, "the lost delete is repeated after the epoch changed")
}
