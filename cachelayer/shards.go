package cachelayer

import (
	"context"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// shards holds one circuit breaker per master of a Redis Cluster, so that a
// dead master stops the calls of its own slots only: reads, fills and
// invalidations of keys on the other masters keep going to Redis.
//
// A key's breaker is the one of the master go-redis would send the key's
// commands to (ClusterClient.MasterForKey, memoised per slot; no round
// trip), so the breaker that refuses or admits a call is the one of the
// node that would serve it.
// Breakers are kept by master address; a master that leaves the topology
// (its slots moved to a promoted replica) has its breaker reset by the next
// topology check.
//
// Until go-redis has loaded the cluster's slot table once (ready), every key
// uses the Cache's own breaker, as for a standalone Redis: MasterForKey
// would otherwise load the table on the read path.
type shards struct {
	cc    *redis.ClusterClient
	ready atomic.Bool // the client's slot table is loaded: MasterForKey never blocks
	mk    func(addr string) *breaker

	mu     sync.Mutex // guards creation and removal in byAddr
	byAddr sync.Map   // master "host:port" → *breaker; read without mu on the hot path

	lastReload atomic.Int64 // unix nanos of the last ReloadState this cache asked for

	// bySlot memoises MasterForKey per slot (a CRC16 and one atomic load
	// instead of go-redis's lookup, ~25 ns against ~120 ns, twice per hit).
	// It is cleared whenever the topology may have changed: a reload asked
	// for, each topology check, a breaker dropped. An entry that is stale
	// meanwhile (go-redis followed a MOVED by itself) only attributes
	// outcomes to the slot's previous master; a half-open probe of that
	// master's breaker then succeeds through the new one, and the next
	// check clears the entry.
	bySlot [slotCount]atomic.Pointer[breaker]
}

// slotCount is the number of Redis Cluster hash slots.
const slotCount = 16384

// reloadEvery is the least time between two topology reloads the cache asks
// go-redis for after failures.
const reloadEvery = 250 * time.Millisecond

// forKey returns the breaker of full's master, or nil when the slot table
// is not known yet.
func (s *shards) forKey(full string) *breaker {
	if !s.ready.Load() {
		return nil
	}
	slot := keySlot(full)
	if b := s.bySlot[slot].Load(); b != nil {
		return b
	}
	node, err := s.cc.MasterForKey(context.Background(), full)
	if err != nil {
		return nil
	}
	b := s.forAddr(node.Options().Addr)
	s.bySlot[slot].Store(b)
	return b
}

// forget clears the per-slot memo of MasterForKey.
func (s *shards) forget() {
	for i := range s.bySlot {
		s.bySlot[i].Store(nil)
	}
}

// forAddr returns the breaker of the master at addr, creating it.
func (s *shards) forAddr(addr string) *breaker {
	if b, ok := s.byAddr.Load(addr); ok {
		return b.(*breaker)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.byAddr.Load(addr); ok {
		return b.(*breaker)
	}
	b := s.mk(addr)
	s.byAddr.Store(addr, b)
	return b
}

// reload asks go-redis to reload the cluster's slot table now (at most once
// per reloadEvery), so that a promoted replica is used within moments of a
// failure rather than at the next periodic reload. It reports whether it
// asked.
func (s *shards) reload() bool {
	now := time.Now().UnixNano()
	last := s.lastReload.Load()
	if now-last < int64(reloadEvery) || !s.lastReload.CompareAndSwap(last, now) {
		return false
	}
	s.cc.ReloadState(context.Background()) // asynchronous (go-redis LazyReload)
	s.forget()
	return true
}

// retain resets and drops the breakers of addresses that are no longer
// masters, and reports whether one of them was open (its master's slots
// moved while it was failing: a topology change that may have lost
// deletes).
func (s *shards) retain(masters map[string]bool) (wasOpen bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byAddr.Range(func(k, v any) bool {
		if !masters[k.(string)] {
			if v.(*breaker).reset() {
				wasOpen = true
			}
			s.byAddr.Delete(k)
		}
		return true
	})
	s.forget() // each check: go-redis may have reloaded its table by itself
	return wasOpen
}

// state reports how many masters have a breaker and how many of those are
// open.
func (s *shards) state() (known, open int) {
	s.byAddr.Range(func(_, v any) bool {
		known++
		if v.(*breaker).isOpen() {
			open++
		}
		return true
	})
	return known, open
}

// ShardStatus is the state of one Redis Cluster master as the cache sees it.
type ShardStatus struct {
	Addr        string // the master's "host:port"
	BreakerOpen bool   // its circuit breaker is open (or half-open): calls of its slots skip Redis
	Replicas    int    // replicas the master reported at the last topology check (-1: not known yet)
}

// Shards returns the masters of a Redis Cluster that the cache has sent
// calls to (or seen in a topology check), sorted by address, with their
// breakers' state. It returns nil for a standalone or Sentinel client and in
// no-cache mode, where [Stats.BreakerOpen] says it all.
func (c *Cache) Shards() []ShardStatus {
	if c.shards == nil || c.noCache() {
		return nil
	}
	var out []ShardStatus
	c.shards.byAddr.Range(func(k, v any) bool {
		addr := k.(string)
		out = append(out, ShardStatus{Addr: addr, BreakerOpen: v.(*breaker).isOpen(), Replicas: c.topo.replicasOf(addr)})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// breakerFor returns the breaker that guards calls of the full key: its
// master's on a Cluster whose slot table is known, else the Cache's own.
func (c *Cache) breakerFor(full string) *breaker {
	if c.shards != nil {
		if b := c.shards.forKey(full); b != nil {
			return b
		}
	}
	return c.br
}

// useRedisFor reports whether a call of the full key may go to Redis now:
// Redis configured, the cache not closed, and the key's breaker allowing it.
func (c *Cache) useRedisFor(full string) bool {
	return c.rdb != nil && !c.closed.Load() && c.breakerFor(full).allow()
}

// outcomeFor is outcome for a call of the full key: it feeds the key's
// breaker.
func (c *Cache) outcomeFor(ctx context.Context, full string, err error) error {
	return c.outcomeOn(ctx, c.breakerFor(full), err)
}

// anyBreakerOpen reports whether a breaker of the cache is open: the
// Cache's own, or one master's on a Cluster.
func (c *Cache) anyBreakerOpen() bool {
	if c.shards != nil && c.shards.ready.Load() {
		_, open := c.shards.state()
		return open > 0
	}
	return c.br.isOpen()
}

// allBreakersOpen reports whether no call can reach Redis because every
// breaker that matters is open: on a Cluster, every known master's.
func (c *Cache) allBreakersOpen() bool {
	if c.shards != nil && c.shards.ready.Load() {
		known, open := c.shards.state()
		if known > 0 {
			return open == known
		}
	}
	return c.br.isOpen()
}

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of the key,
// or of its hash tag (the text between the first "{" and the next "}", when
// not empty), modulo 16384 — as Redis and go-redis compute it.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^key[k]]
	}
	return int(crc) & (slotCount - 1)
}

// crc16Table is the table of CRC16-XMODEM (polynomial 0x1021).
var crc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()
