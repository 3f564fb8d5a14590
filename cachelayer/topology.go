package cachelayer

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// topology is what the cache knows of its Redis's shape: the masters, how
// many replicas each has (for WAIT after deletes), and an epoch that
// changes whenever the shape changed in a way that may have lost
// acknowledged deletes (see [Cache.TopologyEpoch]).
//
// It is checked by short-lived goroutines, never by one that runs for the
// Cache's life: at New, when TopologyEpoch or a delete finds the last check
// older than TopologyInterval, after a Redis failure on a Cluster (at most
// every reloadEvery) and when a breaker closes. Each check costs one round
// trip: CLUSTER SLOTS on a Cluster, INFO server+replication on a standalone
// (or Sentinel-managed) master.
type topology struct {
	c        *Cache
	interval time.Duration

	epoch      atomic.Uint64
	waitDenied atomic.Bool  // Redis refused WAIT (ACL): deletes go without it
	checking   atomic.Bool  // a check is running
	lastCheck  atomic.Int64 // unix nanos when the last check started
	lastForce  atomic.Int64 // unix nanos of the last forced check

	mu       sync.Mutex     // guards the fields below
	replicas map[string]int // master address ("" for a standalone master) → replicas at the last check
	slots    []slotOwner    // Cluster: slot ranges and their masters at the last check, sorted
	runID    string         // standalone: the master's run_id at the last check
	replID   string         // standalone: the master's master_replid at the last check

	hookChecked func() // test hook: after each check
}

// slotOwner is one slot range of a Cluster and its master.
type slotOwner struct {
	start, end int
	master     string
}

func newTopology(c *Cache, interval time.Duration) *topology {
	return &topology{c: c, interval: interval, replicas: map[string]int{}}
}

// bump advances the epoch.
func (t *topology) bump(why string) {
	n := t.epoch.Add(1)
	if near := t.c.near.Load(); near != nil {
		// A failover or moved slots: a near copy may be older than what
		// the new master holds, and a standalone tracker may be on the old
		// master (now a replica).
		if _, cluster := t.c.rdb.(*redis.ClusterClient); cluster {
			near.flush()
			near.poke()
		} else {
			near.restart(why)
		}
	}
	t.c.log.Info("cachelayer: redis topology changed; recent invalidations should be repeated", "why", why, "epoch", n)
}

// maybeCheck starts a check unless one ran within interval.
func (t *topology) maybeCheck() {
	if time.Now().UnixNano()-t.lastCheck.Load() < int64(t.interval) {
		return
	}
	t.start()
}

// forceCheck starts a check now (at most every reloadEvery).
func (t *topology) forceCheck() {
	now := time.Now().UnixNano()
	last := t.lastForce.Load()
	if now-last < int64(reloadEvery) || !t.lastForce.CompareAndSwap(last, now) {
		return
	}
	t.start()
}

// start runs one check on a goroutine of its own (Close waits for it),
// unless one is running.
func (t *topology) start() {
	if !t.checking.CompareAndSwap(false, true) {
		return
	}
	if !t.c.enter() {
		t.checking.Store(false)
		return
	}
	t.lastCheck.Store(time.Now().UnixNano())
	go func() {
		defer t.c.wg.Done()
		defer t.checking.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), t.c.cfg.InvalidateTimeout)
		defer cancel()
		t.check(ctx)
		if t.hookChecked != nil {
			t.hookChecked()
		}
	}()
}

// check looks at the topology once.
func (t *topology) check(ctx context.Context) {
	switch r := t.c.rdb.(type) {
	case *redis.ClusterClient:
		t.checkCluster(ctx, r)
	case *redis.Client:
		t.checkStandalone(ctx, r)
	}
}

// checkCluster compares the slot owners CLUSTER NODES reports (one round
// trip, to a master go-redis picks) with those of the last check; a slot
// with a new master advances the epoch (and makes go-redis reload its slot
// table, in case it has not seen the change). It also resets and drops the
// breakers of nodes that no longer own slots.
func (t *topology) checkCluster(ctx context.Context, cc *redis.ClusterClient) {
	s := t.c.shards
	// MasterForKey loads go-redis's slot table if it has none yet (and
	// costs nothing once it has): from then on each key uses its master's
	// breaker. (ForEachMaster would reload the table on every check.)
	if _, err := cc.MasterForKey(ctx, "ghlcache-topology-check"); err == nil {
		t.c.markShardsReady()
	}
	text, err := cc.ClusterNodes(ctx).Result()
	if err != nil {
		return
	}
	owners, replicas, aliases := parseClusterNodes(text)
	if len(owners) == 0 {
		return
	}
	t.mu.Lock()
	prev := t.slots
	t.slots = owners
	for addr, n := range replicas {
		t.replicas[addr] = n
	}
	for addr := range t.replicas {
		if _, ok := replicas[addr]; !ok {
			delete(t.replicas, addr)
		}
	}
	t.mu.Unlock()
	masters := map[string]bool{}
	for _, o := range owners {
		masters[o.master] = true
		if a := aliases[o.master]; a != "" {
			masters[a] = true // go-redis may name it by hostname
		}
	}
	if len(masters) > 0 && s.retain(masters) {
		t.bump("a failing master left the topology")
	}
	if prev != nil && !sameOwners(prev, owners) {
		s.reload()
		t.bump("a slot has a new master")
	}
}

// parseClusterNodes reads CLUSTER NODES: the slot ranges of each master
// (failed or not: a slot changes owner only when a replica took it over),
// sorted, and each master's replicas that the cluster has not marked failed.
// (CLUSTER SLOTS would be simpler, but Redis 7.0 can leave replicas out of
// it long after they joined.) aliases maps a node's ip:port to its
// hostname:port where it announces a hostname.
func parseClusterNodes(text string) (owners []slotOwner, replicas map[string]int, aliases map[string]string) {
	type node struct {
		addr, master string
		isMaster     bool
		ok           bool
		slots        []string
	}
	byID := map[string]*node{}
	var nodes []*node
	aliases = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], ",")
		hostname := ""
		if _, h, ok := strings.Cut(f[1], ","); ok {
			hostname, _, _ = strings.Cut(h, ",")
		}
		addr, _, _ = strings.Cut(addr, "@")
		if _, port, err := net.SplitHostPort(addr); err == nil && hostname != "" {
			aliases[addr] = net.JoinHostPort(hostname, port)
		}
		n := &node{addr: addr, ok: true, slots: f[8:]}
		for _, flag := range strings.Split(f[2], ",") {
			switch flag {
			case "master":
				n.isMaster = true
			case "fail", "noaddr", "handshake":
				// Gone for the cluster. A replica only suspected to be
				// ("fail?") still counts: it may come back and be promoted,
				// so deletes wait for it (and report it when it does not answer).
				n.ok = false
			}
		}
		if f[3] != "-" {
			n.master = f[3]
		}
		byID[f[0]] = n
		nodes = append(nodes, n)
	}
	replicas = map[string]int{}
	for _, n := range nodes {
		if n.isMaster {
			if _, ok := replicas[n.addr]; !ok && len(n.slots) > 0 {
				replicas[n.addr] = 0 // known to have none, unless a replica line follows
			}
			for _, r := range n.slots {
				if strings.HasPrefix(r, "[") {
					continue // a slot being migrated or imported
				}
				lo, hi, found := strings.Cut(r, "-")
				a, err := strconv.Atoi(lo)
				if err != nil {
					continue
				}
				b := a
				if found {
					if b, err = strconv.Atoi(hi); err != nil {
						continue
					}
				}
				owners = append(owners, slotOwner{start: a, end: b, master: n.addr})
			}
			continue
		}
		if m := byID[n.master]; m != nil && n.ok {
			replicas[m.addr]++
		}
	}
	sort.Slice(owners, func(i, j int) bool { return owners[i].start < owners[j].start })
	return owners, replicas, aliases
}

// sameOwners reports whether every slot has the same master in a and b.
func sameOwners(a, b []slotOwner) bool {
	owner := func(os []slotOwner, slot int) string {
		i := sort.Search(len(os), func(i int) bool { return os[i].end >= slot })
		if i < len(os) && os[i].start <= slot {
			return os[i].master
		}
		return ""
	}
	// Only range boundaries can change an owner: compare at each of them.
	for _, os := range [][]slotOwner{a, b} {
		for _, r := range os {
			for _, slot := range []int{r.start, r.end} {
				if owner(a, slot) != owner(b, slot) {
					return false
				}
			}
		}
	}
	return true
}

// checkStandalone reads the master's run_id, master_replid and connected
// replicas; a changed run_id (a restart) or replication id (a replica
// promoted in its place, as Sentinel does) advances the epoch.
func (t *topology) checkStandalone(ctx context.Context, rdb *redis.Client) {
	info, err := learnReplication(ctx, rdb)
	if err != nil {
		return
	}
	t.mu.Lock()
	prevRun, prevRepl := t.runID, t.replID
	t.runID, t.replID = info.runID, info.replID
	t.replicas[""] = info.replicas
	t.mu.Unlock()
	switch {
	case prevRun != "" && info.runID != prevRun:
		t.bump("the redis master restarted or is another server (new run_id)")
	case prevRepl != "" && info.replID != prevRepl:
		t.bump("the redis master has a new replication id (a replica was promoted)")
	}
}

// replication is what INFO server+replication says of a node.
type replication struct {
	runID, replID, role string
	replicas            int
}

// learnReplication sends one INFO server replication to node.
func learnReplication(ctx context.Context, node *redis.Client) (replication, error) {
	s, err := node.Info(ctx, "server", "replication").Result()
	if err != nil {
		return replication{}, err
	}
	var r replication
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "run_id":
			r.runID = v
		case "master_replid":
			r.replID = v
		case "role":
			r.role = v
		case "connected_slaves":
			r.replicas, _ = strconv.Atoi(v)
		}
	}
	if r.role == "" {
		return r, fmt.Errorf("INFO replication without a role")
	}
	return r, nil
}

// replicasOf returns the replicas of the master at addr ("" for a
// standalone master) at the last check, or -1 when not known.
func (t *topology) replicasOf(addr string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n, ok := t.replicas[addr]; ok {
		return n
	}
	return -1
}

// learnReplicas asks node (the master at addr) for its replicas now, for a
// delete to a master no check has seen yet, and remembers the answer.
func (t *topology) learnReplicas(ctx context.Context, addr string, node *redis.Client) (int, error) {
	info, err := learnReplication(ctx, node)
	if err != nil {
		return 0, err
	}
	t.mu.Lock()
	t.replicas[addr] = info.replicas
	t.mu.Unlock()
	return info.replicas, nil
}

// assumeReplicas records n replicas for the master at addr until the next
// check says otherwise.
func (t *topology) assumeReplicas(addr string, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.replicas[addr] = n
}

// markShardsReady notes that go-redis's slot table is loaded, from when on
// each key uses its master's breaker; the Cache's own breaker, which guarded
// the whole cluster until then, is reset.
func (c *Cache) markShardsReady() {
	if c.shards != nil && c.shards.ready.CompareAndSwap(false, true) {
		c.br.reset()
	}
}

// TopologyEpoch is a number that changes whenever the cache sees its Redis
// change in a way that may have lost acknowledged deletes: a slot of a
// Cluster with a new master (a replica promoted after its master failed),
// a standalone master with a new run_id or replication id (restarted, or
// replaced by a promoted replica, as Sentinel does), or a circuit breaker
// closing after an outage. A caller that keeps recent invalidations (an
// outbox) deletes their keys again when it sees the number change: a
// replica that had not yet received an UNLINK its master acknowledged may
// since have become the master, still holding the old value.
//
// The cache checks the topology when TopologyEpoch is called and the last
// check is older than Config.TopologyInterval (one round trip, on a
// goroutine of its own: TopologyEpoch never waits), after Redis failures
// and when a breaker closes. It is 0 in no-cache mode.
func (c *Cache) TopologyEpoch() uint64 {
	if c.topo == nil || c.noCache() {
		return 0
	}
	c.topo.maybeCheck()
	return c.topo.epoch.Load()
}
