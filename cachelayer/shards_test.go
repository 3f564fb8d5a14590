package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// keysByMaster returns n unprefixed keys per master of cc, by the master
// go-redis routes each to.
func keysByMaster(ctx context.Context, t testing.TB, cc *redis.ClusterClient, c *Cache, n int) map[string][]string {
	t.Helper()
	var masters atomic.Int64
	require.NoError(t, cc.ForEachMaster(ctx, func(context.Context, *redis.Client) error { masters.Add(1); return nil }))
	out := map[string][]string{}
	full := 0
	for i := 0; full < int(masters.Load()); i++ {
		require.Less(t, i, 100000, "no keys for every master")
		key := fmt.Sprintf("credits:%d:enrichment", i)
		node, err := cc.MasterForKey(ctx, c.FullKey(key))
		require.NoError(t, err)
		addr := node.Options().Addr
		if len(out[addr]) < n {
			out[addr] = append(out[addr], key)
			if len(out[addr]) == n {
				full++
			}
		}
	}
	return out
}

// shardLoads counts loader calls per master.
type shardLoads struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *shardLoads) add(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	s.n[addr]++
}

func (s *shardLoads) get(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[addr]
}

// One dead master opens only its own breaker: reads, fills and deletes of
// keys on the other masters keep hitting Redis; DeleteFullEach reports per
// key; go-redis is made to reload its slot table after the failures, so the
// failed shard's keys are hits again soon after its replica took over (the
// client keeps go-redis's default 60 s periodic reload, which alone would be
// far too late); and the topology epoch changes.
func TestClusterMasterDeath(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster")
	}
	ctx := ctxT(t, 50*time.Second)
	cluster := testsvc.StartClusterReplicas(t, 3, 1)
	cc := cluster.ClientWith(&redis.ClusterOptions{
		ContextTimeoutEnabled: true,
		DialTimeout:           200 * time.Millisecond,
		MaxRedirects:          1,
		// ClusterStateReloadInterval: go-redis's default, 60 s.
	})
	c := New(cc, &Config{Prefix: testsvc.Prefix(t), BreakerCooldown: 200 * time.Millisecond,
		InvalidateWaitTimeout: time.Second, // a busy test machine's replicas may be slow to acknowledge
		Logger:                (&logBuffer{}).logger()})
	t.Cleanup(func() { _ = c.Close() })
	epoch0 := c.TopologyEpoch()

	byMaster := keysByMaster(ctx, t, cc, c, 4)
	require.Len(t, byMaster, 3)
	dead := cluster.Addrs[0]
	var loads shardLoads
	master := map[string]string{} // key → master at the start
	for addr, keys := range byMaster {
		for _, k := range keys {
			master[k] = addr
		}
	}
	read := func(key string) error {
		v, err := Fetch(ctx, c, key, time.Minute, func(context.Context) (row, error) {
			loads.add(master[key])
			return sampleRow(7), nil
		})
		if err == nil && v != sampleRow(7) {
			err = fmt.Errorf("read %+v", v)
		}
		return err
	}
	for k := range master {
		require.NoError(t, read(k))
	}
	for addr, keys := range byMaster {
		require.Equal(t, len(keys), loads.get(addr), "one load per key to fill")
	}

	cluster.Server(dead).Kill()

	// Read every key many times: only the dead master's keys go to the
	// loader; the others are hits from Redis throughout.
	hits0 := c.Stats().Hits
	healthyReads := 0
	for range 20 {
		for k, addr := range master {
			require.NoError(t, read(k), "reads never fail")
			if addr != dead {
				healthyReads++
			}
		}
	}
	for addr, keys := range byMaster {
		if addr != dead {
			assert.Equal(t, len(keys), loads.get(addr), "healthy master %s: no load after the kill", addr)
		}
	}
	assert.Equal(t, int64(healthyReads), c.Stats().Hits-hits0, "every read of a healthy shard is a hit, and no other")
	st := c.Stats()
	assert.True(t, st.BreakerOpen)
	assert.True(t, st.Available, "two masters of three are up")
	assert.Equal(t, 1, st.ShardsOpen)
	for _, sh := range c.Shards() {
		assert.Equal(t, sh.Addr == dead, sh.BreakerOpen, "shard %s", sh.Addr)
	}

	// Deletes: per key, by shard.
	var all []string
	for k := range master {
		all = append(all, c.FullKey(k))
	}
	errs := c.DeleteFullEach(ctx, all)
	require.Len(t, errs, len(all), "one error per key: %v", errors.Join(errs...))
	for i, full := range all {
		k := full[len(c.prefix):]
		if master[k] == dead {
			assert.ErrorIs(t, errs[i], ErrUnavailable, "key %s on the dead master", k)
		} else {
			assert.NoError(t, errs[i], "key %s on a healthy master", k)
		}
	}
	err := c.DeleteFull(ctx, all...)
	assert.ErrorIs(t, err, ErrUnavailable)
	for k, addr := range master { // refill the healthy keys
		if addr != dead {
			require.NoError(t, read(k))
		}
	}

	// The replica takes over by itself (node timeout 1 s); the cache's
	// reloads find it well before go-redis's 60 s periodic reload would.
	replicaAddr := ""
	for _, r := range cluster.Replicas {
		nodes, err := cluster.Nodes(r.Addr)
		require.NoError(t, err)
		for _, n := range nodes {
			if n.Addr == dead {
				for _, m := range nodes {
					if m.MasterID == n.ID {
						replicaAddr = m.Addr
					}
				}
			}
		}
		if replicaAddr != "" {
			break
		}
	}
	require.NotEmpty(t, replicaAddr, "the dead master's replica")
	cluster.WaitPromoted(replicaAddr, 20*time.Second)
	var deadKeys []string
	for k, addr := range master {
		if addr == dead {
			deadKeys = append(deadKeys, k)
		}
	}
	waitFor(t, 20*time.Second, "hits on the failed shard's keys after the promotion", func() bool {
		for _, k := range deadKeys {
			if err := read(k); err != nil {
				return false
			}
		}
		before := loads.get(dead)
		for _, k := range deadKeys {
			_ = read(k)
		}
		return loads.get(dead) == before // every read a hit
	})
	node, err := cc.MasterForKey(ctx, c.FullKey(deadKeys[0]))
	require.NoError(t, err)
	assert.Equal(t, replicaAddr, node.Options().Addr)
	waitFor(t, 10*time.Second, "a new topology epoch", func() bool { return c.TopologyEpoch() != epoch0 })
	waitFor(t, 10*time.Second, "the dead master's breaker dropped", func() bool {
		return !c.Stats().BreakerOpen
	})
	assert.Nil(t, c.DeleteFullEach(ctx, all), "every key deletable again")
}

// A delete that no replica confirmed is reported as not replicated (Redis
// WAIT in the delete's own pipeline), on a standalone primary with a paused
// replica; with InvalidateReplicas < 0 it is not waited for.
func TestDeleteWaitsForReplica(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 30*time.Second)
	primary := testsvc.StartRedis(t)
	replica := testsvc.StartReplica(t, primary)
	rdb := primary.Client()
	var pipelines, commands atomic.Int64
	rdb.AddHook(countHook{pipelines: &pipelines, commands: &commands})
	// A generous WAIT: on a busy test machine a healthy replica may take
	// longer than the default 100 ms to acknowledge.
	c := cacheOn(t, rdb, &Config{InvalidateWaitTimeout: 500 * time.Millisecond})
	noWait := cacheOn(t, rdb, &Config{InvalidateReplicas: -1})
	waitFor(t, 5*time.Second, "the cache to learn the replica", func() bool { return c.topo.replicasOf("") == 1 })

	keys := []string{c.FullKey("a"), c.FullKey("b"), c.FullKey("c")}
	for _, k := range keys {
		require.NoError(t, rdb.Set(ctx, k, "x", time.Minute).Err())
	}
	p0, c0 := pipelines.Load(), commands.Load()
	errs := c.DeleteFullEach(ctx, keys)
	require.Nil(t, errs, "a healthy replica confirms: %v", errors.Join(errs...))
	assert.Equal(t, int64(1), pipelines.Load()-p0, "one round trip")
	assert.Equal(t, int64(4), commands.Load()-c0, "three UNLINKs and a WAIT")

	require.NoError(t, rdb.Set(ctx, keys[0], "x", time.Minute).Err())
	replica.Pause()
	errs = c.DeleteFullEach(ctx, keys[:1])
	require.Len(t, errs, 1)
	require.ErrorIs(t, errs[0], ErrNotReplicated)
	assert.NotErrorIs(t, errs[0], ErrUnavailable)
	assert.ErrorIs(t, c.DeleteFull(ctx, keys[0]), ErrNotReplicated)
	assert.ErrorIs(t, c.Delete(ctx, "a"), ErrNotReplicated)
	n, err := rdb.Exists(ctx, keys[0]).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "deleted on the primary all the same")
	st := c.Stats()
	assert.Equal(t, int64(3), st.NotReplicated)
	assert.False(t, st.BreakerOpen, "a slow replica says nothing about the primary")

	assert.Nil(t, noWait.DeleteFullEach(ctx, keys[:1]), "InvalidateReplicas -1: no WAIT")

	replica.Resume()
	waitFor(t, 5*time.Second, "the replica to confirm again", func() bool { return c.DeleteFullEach(ctx, keys[:1]) == nil })
}

// A primary without replicas gets no WAIT: a delete is one UNLINK.
func TestDeleteWithoutReplicasDoesNotWait(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 10*time.Second)
	rdb := testsvc.StartRedis(t).Client()
	var pipelines, commands atomic.Int64
	rdb.AddHook(countHook{pipelines: &pipelines, commands: &commands})
	c := cacheOn(t, rdb, nil)
	waitFor(t, 5*time.Second, "the cache to learn it has no replicas", func() bool { return c.topo.replicasOf("") == 0 })
	p0, c0 := pipelines.Load(), commands.Load()
	require.NoError(t, c.Delete(ctx, "a", "b"))
	assert.Equal(t, int64(1), pipelines.Load()-p0)
	assert.Equal(t, int64(2), commands.Load()-c0, "two UNLINKs, no WAIT")
}

// The epoch of a standalone master changes when it restarts (new run_id)
// and when the node the client talks to is promoted from replica to master
// (new replication id), as after a Sentinel failover.
func TestTopologyEpochStandalone(t *testing.T) {
	t.Parallel()
	primary := testsvc.StartRedis(t)
	replica := testsvc.StartReplica(t, primary)

	c := cacheOn(t, primary.Client(), &Config{TopologyInterval: 20 * time.Millisecond, Logger: (&logBuffer{}).logger()})
	waitFor(t, 5*time.Second, "the first check", func() bool { return c.topo.replicasOf("") == 1 })
	e0 := c.TopologyEpoch()
	primary.Restart()
	waitFor(t, 10*time.Second, "an epoch after the restart", func() bool { return c.TopologyEpoch() != e0 })
	replica.WaitReplicating(10 * time.Second) // resynced: its replication id is stable again

	// A client of the replica's address; the replica is promoted.
	r := cacheOn(t, replica.Client(), &Config{TopologyInterval: 20 * time.Millisecond, Logger: (&logBuffer{}).logger()})
	waitFor(t, 5*time.Second, "the first check", func() bool {
		r.topo.mu.Lock()
		defer r.topo.mu.Unlock()
		return r.topo.replID != ""
	})
	e1 := r.TopologyEpoch()
	replica.Promote()
	waitFor(t, 10*time.Second, "an epoch after the promotion", func() bool { return r.TopologyEpoch() != e1 })
}

// Open builds a cluster client from a URL with addr parameters, with the
// recommended slot-table reload interval.
func TestOpenCluster(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a Redis Cluster")
	}
	cluster := testsvc.StartCluster(t, 3)
	ctx := ctxT(t, 20*time.Second)
	c, err := Open(ctx, cluster.URL(), &Config{Prefix: testsvc.Prefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	cc, ok := c.rdb.(*redis.ClusterClient)
	require.True(t, ok, "a cluster client, not %T", c.rdb)
	assert.Equal(t, RecommendedClusterStateReloadInterval, cc.Options().ClusterStateReloadInterval)
	v, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (row, error) { return sampleRow(1), nil })
	require.NoError(t, err)
	assert.Equal(t, sampleRow(1), v)
	require.NoError(t, c.Delete(ctx, "k"))

	// The cache's own slot hash agrees with the server's, tags included.
	pipe := cc.Pipeline()
	var keys []string
	var cmds []*redis.IntCmd
	for i := range 2000 {
		k := fmt.Sprintf("ghl:credits:%d:enrichment", i)
		if i%10 == 0 {
			k = fmt.Sprintf("x{user%d}y{z}", i)
		}
		keys = append(keys, k)
		cmds = append(cmds, pipe.ClusterKeySlot(ctx, k))
	}
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	for i, k := range keys {
		require.Equal(t, int(cmds[i].Val()), keySlot(k), "slot of %q", k)
	}

	h := c.Health(ctx)
	assert.True(t, h.Healthy, "%+v", h)
	cluster.Servers[1].Kill()
	h = c.Health(ctx)
	assert.False(t, h.Healthy)
	assert.Contains(t, h.Err, cluster.Addrs[1])
}

// A half-open probe whose outcome went to another breaker (the key's
// master changed between allow and outcome) does not keep its breaker
// half-open for good.
func TestBreakerLostProbe(t *testing.T) {
	t.Parallel()
	b := &breaker{threshold: 1, cooldown: time.Millisecond, probeTTL: 20 * time.Millisecond, logger: (&logBuffer{}).logger()}
	b.failure(errors.New("boom"))
	require.True(t, b.isOpen())
	waitFor(t, time.Second, "the cooldown", func() bool { return b.allow() }) // the probe, never reported
	assert.False(t, b.allow(), "one probe at a time")
	waitFor(t, time.Second, "another probe after probeTTL", func() bool { return b.allow() })
	b.success()
	assert.False(t, b.isOpen())
}

// countHook counts pipelines (round trips) and the commands in them, and
// single commands as one of each (but not the connection set-up's HELLO
// and CLIENT, nor the topology checks' INFO).
type countHook struct{ pipelines, commands *atomic.Int64 }

func (countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		switch cmd.Name() {
		case "info", "hello", "client": // topology checks, connection set-up
		default:
			h.pipelines.Add(1)
			h.commands.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		switch cmds[0].Name() {
		case "hello", "client": // connection set-up
			return next(ctx, cmds)
		}
		h.pipelines.Add(1)
		h.commands.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// The lost delete of issue 10, made visible: the master acknowledges an
// UNLINK its paused replica never receives, the master dies and the replica
// takes over with the old value. The delete reports ErrNotReplicated (so an
// outbox keeps its record), the topology epoch changes, and deleting again
// removes the old value from the new master.
func TestAckedDeleteLostInFailover(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster")
	}
	ctx := ctxT(t, 50*time.Second)
	cluster := testsvc.StartClusterReplicas(t, 3, 1)
	cc := cluster.ClientWith(&redis.ClusterOptions{ContextTimeoutEnabled: true, DialTimeout: 200 * time.Millisecond,
		ClusterStateReloadInterval: RecommendedClusterStateReloadInterval})
	c := New(cc, &Config{Prefix: testsvc.Prefix(t), BreakerCooldown: 100 * time.Millisecond,
		InvalidateWaitTimeout: time.Second, // a busy test machine's replicas may be slow to acknowledge
		Logger:                (&logBuffer{}).logger()})
	t.Cleanup(func() { _ = c.Close() })

	byMaster := keysByMaster(ctx, t, cc, c, 2)
	key := byMaster[cluster.Addrs[0]][0]
	full := c.FullKey(key)
	master := cluster.Servers[0]
	replica := cluster.ReplicaOf(master.Addr)
	require.NoError(t, c.Set(ctx, key, sampleRow(1), time.Minute))
	master.WaitReplicasOnline(1, 10*time.Second) // the replica holds the value
	for _, m := range cluster.Addrs {
		waitFor(t, 5*time.Second, "the cache to learn the replicas", func() bool { return c.topo.replicasOf(m) == 1 })
	}
	epoch0 := c.TopologyEpoch()

	// With one replica paused, a delete of keys on every master is
	// confirmed by the other masters' replicas only: per key, per master.
	var all []string
	for _, keys := range byMaster {
		for _, k := range keys[1:] {
			require.NoError(t, c.Set(ctx, k, sampleRow(2), time.Minute))
			all = append(all, c.FullKey(k))
		}
	}
	replica.Pause()
	errs := c.DeleteFullEach(ctx, all)
	require.Len(t, errs, len(all))
	for i, full := range all {
		node, err := cc.MasterForKey(ctx, full)
		require.NoError(t, err)
		if node.Options().Addr == master.Addr {
			assert.ErrorIs(t, errs[i], ErrNotReplicated, "key %s of the master whose replica is paused", full)
		} else {
			assert.NoError(t, errs[i], "key %s of a master with a healthy replica", full)
		}
	}
	replica.Resume()
	master.WaitReplicasOnline(1, 10*time.Second)

	// Cut the replica off: paused, and its link closed by the master, so
	// that the UNLINK does not wait in a socket buffer for the replica to
	// read it when it resumes (a lagging replica, or a partition).
	replica.Pause()
	require.NoError(t, master.Client().Do(ctx, "CLIENT", "KILL", "TYPE", "replica").Err())
	errs = c.DeleteFullEach(ctx, []string{full})
	require.Len(t, errs, 1)
	require.ErrorIs(t, errs[0], ErrNotReplicated, "the master deleted it, no replica confirmed")
	master.Kill()
	replica.Resume()
	cluster.Promote(replica, 20*time.Second)

	// The acknowledged delete is lost: the new master holds the old value.
	direct := replica.Client()
	n, err := direct.Exists(ctx, full).Result()
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "the promoted replica still holds the deleted key")

	waitFor(t, 15*time.Second, "a new topology epoch", func() bool { return c.TopologyEpoch() != epoch0 })
	waitFor(t, 15*time.Second, "the delete repeated on the new master", func() bool {
		return c.DeleteFullEach(ctx, []string{full}) == nil
	})
	n, err = direct.Exists(ctx, full).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "gone from the new master")
}

// A Redis whose ACL refuses WAIT gets deletes without it (logged once),
// not every key reported unreplicated; one that refuses INFO gets no INFO
// before every delete (and no WAIT, its replicas being unknown).
func TestDeleteWhereACLRefusesWaitOrInfo(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	primary := testsvc.StartRedis(t)
	testsvc.StartReplica(t, primary)
	admin := primary.Client()
	for _, user := range []string{"nowait", "noinfo"} {
		t.Run(user, func(t *testing.T) {
			require.NoError(t, admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-"+user[2:]).Err())
			rdb := redis.NewClient(&redis.Options{Addr: primary.Addr, Username: user, Password: "pw", ContextTimeoutEnabled: true})
			t.Cleanup(func() { _ = rdb.Close() })
			var infos atomic.Int64
			rdb.AddHook(nameHook{name: "info", n: &infos})
			var logs logBuffer
			c := cacheOn(t, rdb, &Config{Logger: logs.logger()})
			for i := range 3 {
				key := fmt.Sprintf("k%d", i)
				require.NoError(t, admin.Set(ctx, c.FullKey(key), "x", time.Minute).Err())
				require.NoError(t, c.Delete(ctx, key), "delete %d", i)
				n, err := admin.Exists(ctx, c.FullKey(key)).Result()
				require.NoError(t, err)
				assert.Zero(t, n)
			}
			st := c.Stats()
			assert.Zero(t, st.NotReplicated)
			assert.False(t, st.BreakerOpen)
			if user == "nowait" {
				assert.Equal(t, 1, strings.Count(logs.String(), "refuses WAIT"), logs.String())
			} else {
				assert.LessOrEqual(t, infos.Load(), int64(2), "the check at New, perhaps one delete's: not one per delete")
			}
		})
	}
}

// nameHook counts the commands called name.
type nameHook struct {
	name string
	n    *atomic.Int64
}

func (nameHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h nameHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == h.name {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (nameHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// Behind Sentinel (a FailoverClient), a failover to the replica changes the
// topology epoch, and deletes on the new master succeed again (confirmed by
// the old master, now its replica).
func TestTopologyEpochSentinelFailover(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 40*time.Second)
	primary := testsvc.StartRedis(t)
	testsvc.StartReplica(t, primary)
	sentinel := testsvc.StartSentinel(t, primary, 1)
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName: sentinel.MasterName, SentinelAddrs: []string{sentinel.Addr},
		ContextTimeoutEnabled: true, DialTimeout: 250 * time.Millisecond,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	c := cacheOn(t, rdb, &Config{TopologyInterval: 50 * time.Millisecond, BreakerCooldown: 100 * time.Millisecond,
		Logger: (&logBuffer{}).logger()})
	waitFor(t, 5*time.Second, "the first check", func() bool { return c.topo.replicasOf("") == 1 })
	e0 := c.TopologyEpoch()
	require.NoError(t, c.Set(ctx, "k", sampleRow(1), time.Minute))

	now := sentinel.Failover(20 * time.Second)
	require.NotEqual(t, primary.Addr, now)
	waitFor(t, 15*time.Second, "a new epoch after the Sentinel failover", func() bool { return c.TopologyEpoch() != e0 })
	waitFor(t, 15*time.Second, "deletes on the new master", func() bool { return c.Delete(ctx, "k") == nil })
}

// holdKeyHook holds the first command that names key (its second
// argument) until release is closed.
type holdKeyHook struct {
	key     string
	once    sync.Once
	held    chan struct{}
	release chan struct{}
}

func (h *holdKeyHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdKeyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); len(args) > 1 && (args[1] == h.key || isStringPtr(args[1], h.key)) {
			hold := false
			h.once.Do(func() { hold = true })
			if hold {
				close(h.held)
				<-h.release
			}
		}
		return next(ctx, cmd)
	}
}
func (h *holdKeyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestHungMasterHoldsUpOnlyItsOwnReads: with one read slot per master
// (ReadsInFlight 1), a read stuck on one master does not make a read of
// another master's key wait behind it: each master has its own slots and
// queue, and the other read is a hit at once.
func TestHungMasterHoldsUpOnlyItsOwnReads(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-master Redis Cluster")
	}
	ctx := ctxT(t, 30*time.Second)
	cluster := testsvc.StartCluster(t, 3)
	cc := cluster.Client()
	c := New(cc, &Config{Prefix: testsvc.Prefix(t), ReadsInFlight: 1, OpTimeout: 20 * time.Second})
	t.Cleanup(func() { _ = c.Close() })
	byMaster := keysByMaster(ctx, t, cc, c, 1)
	require.GreaterOrEqual(t, len(byMaster), 2)
	var keys []string
	for _, ks := range byMaster {
		keys = append(keys, ks[0])
	}
	for _, k := range keys[:2] {
		require.NoError(t, c.Set(ctx, k, sampleRow(5), time.Minute))
	}
	waitFor(t, 10*time.Second, "the slot table", func() bool { return c.shards.ready.Load() })
	hook := &holdKeyHook{key: c.FullKey(keys[0]), held: make(chan struct{}), release: make(chan struct{})}
	cc.AddHook(hook)
	t.Cleanup(func() {
		select {
		case <-hook.release:
		default:
			close(hook.release)
		}
	})
	load := func(context.Context) (row, error) { return sampleRow(9), nil }
	stuck := fetchAsync(ctx, t, c, keys[0], load)
	<-hook.held
	v, err := Fetch(ctx, c, keys[1], time.Minute, load)
	require.NoError(t, err)
	require.Equal(t, sampleRow(5), v, "a hit from the other master")
	select {
	case <-stuck:
		t.Fatal("the held read returned before its release")
	default:
	}
	st := c.Stats()
	require.Equal(t, int64(1), st.Hits)
	require.Zero(t, st.Fallbacks)
	close(hook.release)
	require.Equal(t, sampleRow(5), <-stuck)
}

// isStringPtr reports whether a is a *string holding s (the form Fetch
// passes its key in, to save an allocation).
func isStringPtr(a any, s string) bool {
	p, ok := a.(*string)
	return ok && *p == s
}
