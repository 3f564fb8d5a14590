package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// NearConfig configures the near tier: decoded values held in this
// process's memory in front of Redis, for the keys under Prefix and the
// prefixes given to [Cache.EnableNear] (see
// [Cache.EnableNear] and the package documentation's "Near tier"). A near
// hit costs no round trip. Each process is told of every change of those
// keys in Redis — by this library, by another process, by redis-cli, by an
// expiry, an eviction or a FLUSHDB — through Redis's server-assisted client
// tracking (CLIENT TRACKING BCAST on a dedicated connection to each
// master), and drops its copy when told. While it cannot be told (the
// tracking connection down or reconnecting, a breaker open), it serves
// nothing from memory and keeps nothing.
//
// What it costs in freshness: a near copy in another process outlives a
// write by the time Redis takes to tell that process (about a millisecond
// on one host; see the README for what was measured); it is never served
// longer than MaxStaleness after it was read, nor past its Redis entry's
// expiry. The process that writes drops its own copy before the write
// returns.
type NearConfig struct {
	// Prefix is a key prefix (without Config.Prefix) whose Fetch reads go
	// through the near tier from New on, such as "workflow:". Empty (the
	// default) leaves the tier off until [Cache.EnableNear] adds one.
	Prefix string
	// MaxEntries bounds how many values the tier holds; default 10 000.
	MaxEntries int
	// MaxBytes bounds the tier's memory, counted as each entry's encoded
	// size plus a fixed overhead, and never less than MaxBytes/MaxEntries
	// per entry (which is how MaxEntries is enforced); default 64 MiB.
	MaxBytes int64
	// MaxStaleness is the longest a near copy is served after it was read
	// from Redis, whatever the invalidations say: the backstop if one were
	// ever lost. Default 30 s. A copy also never outlives its Redis
	// entry's remaining TTL, read in the same round trip as the entry.
	MaxStaleness time.Duration
	// MaxLag bounds how far behind Redis a process may be and still serve
	// from memory: while near reads happen, each tracking connection is
	// pinged every MaxLag/2, and a near copy is served only while every
	// master has answered a ping sent less than MaxLag ago (its answer
	// comes after every invalidation Redis sent before it). A process too
	// busy to read its tracking connection, or one whose connection went
	// silent, reads through Redis until it has caught up. Default 20 ms; it
	// is the bound on how long another process may serve a value after a
	// write has returned (the measured time is about a millisecond).
	MaxLag time.Duration
	// NoWriteWait lets a change of a near key (Delete, Set, Replace, and
	// the cached repositories' writes through them) return as soon as Redis
	// has it. By default it returns MaxLag after that: every other process
	// that serves the key from memory has by then either applied the
	// invalidation or stopped serving (it serves only while it has caught
	// up with Redis within MaxLag), so a read that begins after the change
	// returned sees it in every process, as without a near tier. With
	// NoWriteWait, another process may serve the old value for up to MaxLag
	// after the change returned (about a millisecond, typically).
	NoWriteWait bool
	// Keepalive is how often an idle tracking connection (no near reads) is
	// pinged, and how long a ping may go unanswered before the connection
	// counts as lost (the tier flushes and stops serving until a new one is
	// confirmed); default 1 s. A connection that is closed is noticed at once.
	Keepalive time.Duration
}

// Near tier defaults.
const (
	defaultNearEntries   = 10_000
	defaultNearBytes     = 64 << 20
	defaultNearStaleness = 30 * time.Second
	defaultNearKeepalive = time.Second
	defaultNearMaxLag    = 5 * time.Millisecond
)

// nearOverhead is what an entry costs beyond its key and encoded bytes (the
// entry, the decoded value's headers, otter's node), for MaxBytes.
const nearOverhead = 160

// nearStripes is the number of per-key generation counters; keys share
// them by hash, so an invalidation of one key also refuses, rarely, the
// store of another key read at the same moment (a miss, never a stale hit).
const nearStripes = 4096

// Modes of a near entry: how a hit gives each caller a value of its own.
const (
	nearShare    = iota // the value holds no memory a caller could change: returned as is
	nearClone           // its type has Clone() T: each hit returns a clone
	nearDecode          // otherwise: each hit decodes the entry's codec bytes
	nearNotFound        // a cached not-found marker
)

// nearEntry is one value of the near tier.
type nearEntry struct {
	v      any    // the decoded value (nearShare, nearClone; a clone of what the reading caller got)
	enc    string // its codec bytes (nearDecode)
	mode   uint8
	weight uint32
	life   time.Duration // how long it may be served from when it was stored
}

// nearTier is the Cache's near tier: created by the first prefix (Config or
// EnableNear), closed by Close.
//
// Why a copy can be trusted: a process stores a value read from Redis only
// if no invalidation of its key (nor a flush) was received between the
// moment just before the read was sent and the moment just after the copy
// was stored — checked with a generation counter per key (striped) and an
// epoch for flushes, both compared before and after the store, so that an
// invalidation that slips in between removes the copy it raced. Redis sends
// the invalidation of a change to every tracking connection when it makes
// the change, so a read that returned the old value was sent before the
// invalidation was: either the invalidation is received before the copy is
// checked (refused), or after (it drops the copy).
type nearTier struct {
	c        *Cache
	cfg      NearConfig
	store    *otter.Cache[string, *nearEntry]
	seed     maphash.Seed
	prefixes atomic.Pointer[[]string] // the key prefixes served (without Config.Prefix)
	serving  atomic.Bool              // every master's tracking is confirmed and no breaker is open
	start    time.Time                // the tier clock's origin (monotonic)
	behind   atomic.Int64             // the oldest catch-up mark of the trackers (tier clock); 0: some tracker has none
	wanted   atomic.Bool              // a near read happened since the last PING: keep catching up
	epoch    atomic.Uint64            // advanced by every flush and every change of serving
	gens     [nearStripes]atomic.Uint64

	hits, misses, bypasses   atomic.Int64
	stored, rejected         atomic.Int64
	invalidations, flushes   atomic.Int64
	trackerDrops, reconnects atomic.Int64
	settles                  atomic.Int64

	mu       sync.Mutex // guards trackers, closed, reasons
	trackers map[string]*tracker
	closed   bool
	blocked  string        // why the tier is not serving, for logs and Stats ("" while serving)
	ready    chan struct{} // closed while serving; replaced when serving stops
	wake     chan struct{}
	done     chan struct{}

	// Test hooks (nil in production).
	hookStore       func(key string)        // a value read from Redis is about to be stored
	hookInvalidated func(fullKeys []string) // a tracking message was applied
	hookServing     func(serving bool)      // serving changed
	hookSubscribe   func(addr string)       // a tracker is about to (re)connect
}

// EnableNear puts the keys that start with keyPrefix (without
// Config.Prefix) under the near tier, starting the tier's tracking if it is
// not running yet; until tracking is confirmed, those keys are read from
// Redis as before. It is idempotent. The cached repositories call it for
// their domains (workflow definitions by default). In no-cache mode and
// after Close it does nothing; with a client other than a standalone,
// Sentinel or Cluster one (a Ring), it returns an error that Is ErrInvalid.
func (c *Cache) EnableNear(keyPrefix string) error {
	if keyPrefix == "" || len(keyPrefix) > MaxKeyLen {
		return fmt.Errorf("%w: near prefix must be 1 to %d bytes", ErrInvalid, MaxKeyLen)
	}
	if c.rdb == nil {
		return nil
	}
	if _, ok := trackingMasters(c.rdb); !ok {
		return fmt.Errorf("%w: the near tier needs a standalone, Sentinel or Cluster client, not %T", ErrInvalid, c.rdb)
	}
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil
	}
	n := c.near.Load()
	if n == nil {
		n = newNearTier(c)
		if c.hookNearNew != nil {
			c.hookNearNew(n)
		}
		c.near.Store(n)
		c.wg.Add(1) // the tier's loop; Close stops it first
		c.mu.Unlock()
		n.addPrefix(keyPrefix)
		go n.run()
		return nil
	}
	c.mu.Unlock()
	if n.addPrefix(keyPrefix) {
		n.restart("a near prefix was added")
	}
	return nil
}

func newNearTier(c *Cache) *nearTier {
	cfg := c.cfg.Near
	n := &nearTier{c: c, cfg: cfg, seed: maphash.MakeSeed(), start: time.Now(), trackers: map[string]*tracker{},
		wake: make(chan struct{}, 1), done: make(chan struct{}), ready: make(chan struct{}), blocked: "tracking not confirmed yet"}
	floor := uint32(min(max(cfg.MaxBytes/int64(cfg.MaxEntries), 1), 1<<31))
	n.store = otter.Must(&otter.Options[string, *nearEntry]{
		MaximumWeight: uint64(cfg.MaxBytes),
		Weigher: func(_ string, e *nearEntry) uint32 {
			return max(e.weight, floor)
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *nearEntry]) time.Duration {
			return e.Value.life
		}),
	})
	empty := []string{}
	n.prefixes.Store(&empty)
	return n
}

// addPrefix adds p to the served prefixes and reports whether the tracked
// set changed.
func (n *nearTier) addPrefix(p string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := *n.prefixes.Load()
	for _, q := range old {
		if strings.HasPrefix(p, q) {
			return false // already covered
		}
	}
	next := []string{p}
	for _, q := range old {
		if !strings.HasPrefix(q, p) { // a longer one is covered by p now (Redis refuses overlapping prefixes)
			next = append(next, q)
		}
	}
	n.prefixes.Store(&next)
	return true
}

// covers reports whether key is served by the tier.
func (n *nearTier) covers(key string) bool {
	for _, p := range *n.prefixes.Load() {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func (n *nearTier) stripe(key string) uint32 {
	return uint32(maphash.String(n.seed, key) % nearStripes)
}

// nearSnap is the state a read of a key is checked against before its
// value may be stored.
type nearSnap struct {
	epoch, gen uint64
	stripe     uint32
	ok         bool // the tier was serving: the read may store
}

// snapshot is taken just before the Redis read of key is sent.
func (n *nearTier) snapshot(key string) nearSnap {
	if !n.serving.Load() {
		return nearSnap{}
	}
	i := n.stripe(key)
	return nearSnap{epoch: n.epoch.Load(), gen: n.gens[i].Load(), stripe: i, ok: true}
}

// valid reports whether nothing that voids s has happened since it was taken.
func (n *nearTier) valid(s nearSnap) bool {
	return n.serving.Load() && n.epoch.Load() == s.epoch && n.gens[s.stripe].Load() == s.gen
}

// now is the tier's clock: monotonic nanoseconds since the tier started (never 0).
func (n *nearTier) now() int64 { return int64(time.Since(n.start)) + 1 }

// caughtUp recomputes behind from the trackers' marks.
func (n *nearTier) caughtUp() {
	n.mu.Lock()
	var oldest int64
	for _, t := range n.trackers {
		m := t.caughtUp.Load()
		if m == 0 {
			oldest = 0
			break
		}
		if oldest == 0 || m < oldest {
			oldest = m
		}
	}
	n.behind.Store(oldest)
	n.mu.Unlock()
}

// current reports whether every tracker has caught up within MaxLag; a
// near read that finds it has not asks the trackers to catch up.
func (n *nearTier) current() bool {
	if !n.wanted.Load() {
		n.wanted.Store(true)
	}
	b := n.behind.Load()
	return b != 0 && time.Duration(n.now()-b) < n.cfg.MaxLag
}

// nearGet returns the near copy of key, when the tier serves and holds one
// of type T: the value (the caller's own, see the modes) or the cached
// not-found error.
func nearGet[T any](n *nearTier, key string, countMiss bool) (T, bool, error) {
	var zero T
	if !n.serving.Load() || !n.current() {
		if countMiss {
			n.bypasses.Add(1)
		}
		return zero, false, nil
	}
	e, ok := n.store.GetIfPresent(key)
	if !ok {
		if countMiss {
			n.misses.Add(1)
		}
		return zero, false, nil
	}
	switch e.mode {
	case nearNotFound:
		n.hits.Add(1)
		return zero, true, &notFoundError{key: key}
	case nearShare:
		if v, ok := e.v.(T); ok {
			n.hits.Add(1)
			return v, true, nil
		}
	case nearClone:
		if cl, ok := e.v.(interface{ Clone() T }); ok {
			n.hits.Add(1)
			return cl.Clone(), true, nil
		}
	case nearDecode:
		var v T
		if _, ok := e.v.(T); ok && n.c.codec.Unmarshal([]byte(e.enc), &v) == nil {
			n.hits.Add(1)
			return v, true, nil
		}
	}
	if countMiss {
		n.misses.Add(1) // another T under the same key: not ours to share
	}
	return zero, false, nil
}

// FetchNear answers a [FetchWith] of key from the near tier alone: ok is
// true when the tier holds key's value (v) or not-found marker (err Is
// ErrNotFound) and may serve it now, as FetchWith with the same options
// would. Otherwise it returns ok false and costs nothing but the lookup
// (nothing is counted: the caller's FetchWith counts the miss). It lets a
// caller skip building its loader for a hit.
func FetchNear[T any](c *Cache, key string, opts FetchOptions) (v T, ok bool, err error) {
	n := c.near.Load()
	if n == nil || opts.SkipRedis || opts.NoNear || !n.covers(key) {
		return v, false, nil
	}
	if v, ok, err = nearGet[T](n, key, false); ok && c.tel != nil {
		c.nearHit(key)
	}
	return v, ok, err
}

// nearStore keeps v (what the caller's read found in Redis, kind a value or
// a not-found marker, payload its codec bytes) as key's near copy, unless an
// invalidation or a flush came since s was taken. pttl is the entry's
// remaining TTL as Redis reported it with the read; ttl the Fetch's.
func nearStore[T any](n *nearTier, key string, s nearSnap, kind entryKind, v T, payload string, pttl, ttl time.Duration) {
	if !n.valid(s) {
		n.rejected.Add(1)
		return
	}
	life := min(n.cfg.MaxStaleness, ttl)
	switch {
	case pttl > 0:
		life = min(life, pttl)
	case pttl != -1: // -2: gone already; anything else: not known
		return
	}
	e := &nearEntry{life: life, weight: uint32(min(len(key)+len(payload)+nearOverhead, 1<<31))}
	switch {
	case kind == entryNotFound:
		e.mode = nearNotFound
	default:
		if cl, ok := any(v).(interface{ Clone() T }); ok {
			e.mode, e.v = nearClone, cl.Clone() // the caller keeps v; the tier a copy of its own
		} else if shareable(reflect.TypeFor[T]()) {
			e.mode, e.v = nearShare, v
		} else {
			var zero T
			e.mode, e.v, e.enc = nearDecode, zero, payload
		}
	}
	if n.hookStore != nil {
		n.hookStore(key)
	}
	n.store.Set(key, e)
	if !n.valid(s) { // an invalidation slipped in: it may have run before the Set
		n.store.Invalidate(key)
		n.rejected.Add(1)
		return
	}
	n.stored.Add(1)
}

// shareableTypes memoises shareable per type.
var shareableTypes sync.Map // reflect.Type → bool

// shareable reports whether values of t hold no memory that a caller could
// change and another see: no pointers, slices, maps, channels, functions or
// interfaces (time.Time is allowed: its Location is immutable).
func shareable(t reflect.Type) bool {
	if v, ok := shareableTypes.Load(t); ok {
		return v.(bool)
	}
	ok := shareableOf(t, 0)
	shareableTypes.Store(t, ok)
	return ok
}

func shareableOf(t reflect.Type, depth int) bool {
	if depth > 16 {
		return false
	}
	if t == reflect.TypeFor[time.Time]() {
		return true
	}
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		return true
	case reflect.Array:
		return shareableOf(t.Elem(), depth+1)
	case reflect.Struct:
		for i := range t.NumField() {
			if !shareableOf(t.Field(i).Type, depth+1) {
				return false
			}
		}
		return true
	}
	return false
}

// drop removes this process's near copy of a full key that it is about to
// change or has changed (Delete, Replace, Set): before the command, so that
// no read of this process serves it meanwhile, and after its reply, so that
// a read that fetched the old value just before the change cannot keep it.
func (n *nearTier) drop(full string) {
	if !strings.HasPrefix(full, n.c.prefix) {
		return
	}
	key := full[len(n.c.prefix):]
	n.gens[n.stripe(key)].Add(1)
	n.store.Invalidate(key)
}

// nearSettle waits, after a delete or replace of keys (full, errs its
// outcomes), until MaxLag has passed since Redis made it, when one of the
// keys that reached Redis is under the near tier: then no other process can
// still serve the old value when the call returns (see NoWriteWait). It
// returns early if ctx ends.
func (c *Cache) nearSettle(ctx context.Context, full []string, errs []error) {
	n := c.near.Load()
	if n == nil || n.cfg.NoWriteWait {
		return
	}
	covered := false
	for i, k := range full {
		if (errs == nil || errs[i] == nil || errors.Is(errs[i], ErrNotReplicated)) &&
			strings.HasPrefix(k, c.prefix) && n.covers(k[len(c.prefix):]) {
			covered = true
			break
		}
	}
	if covered {
		n.settle(ctx)
	}
}

// settle waits MaxLag (or until ctx ends) after a change of near keys
// reached Redis; see NoWriteWait.
func (n *nearTier) settle(ctx context.Context) {
	if n.cfg.NoWriteWait {
		return
	}
	n.settles.Add(1)
	t := time.NewTimer(n.cfg.MaxLag)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// invalidated applies a tracking message: the full keys Redis changed.
func (n *nearTier) invalidated(fullKeys []string) {
	for _, k := range fullKeys {
		n.drop(k)
	}
	n.invalidations.Add(int64(len(fullKeys)))
	if n.hookInvalidated != nil {
		n.hookInvalidated(fullKeys)
	}
}

// flush drops every near copy (a FLUSHDB, a reconnect, a topology change):
// reads in flight cannot store what they read before it.
func (n *nearTier) flush() {
	n.epoch.Add(1)
	n.store.InvalidateAll()
	n.flushes.Add(1)
}

// overlaps reports whether keys under the full prefix can be near keys.
func (n *nearTier) overlaps(full string) bool {
	for _, p := range *n.prefixes.Load() {
		if p = n.c.prefix + p; strings.HasPrefix(full, p) || strings.HasPrefix(p, full) {
			return true
		}
	}
	return false
}

// prefixFlush drops the near copies under a full key prefix (DeletePrefix):
// every copy, as the tier keeps no index by prefix and DeletePrefix is rare.
func (n *nearTier) prefixFlush(full string) {
	if strings.HasPrefix(full, n.c.prefix) || strings.HasPrefix(n.c.prefix, full) {
		n.flush()
	}
}

// reevaluate sets serving from the trackers and the breakers: the tier
// serves only while every master's tracking connection is confirmed and no
// breaker is open. Turning either way flushes.
func (n *nearTier) reevaluate() {
	n.mu.Lock()
	why := ""
	switch {
	case n.closed || n.c.closed.Load():
		why = "cache closed"
	case len(n.trackers) == 0:
		why = "no tracking connection"
	case n.c.anyBreakerOpen():
		why = "a circuit breaker is open"
	default:
		for _, t := range n.trackers {
			if !t.up.Load() {
				why = "tracking connection to " + t.addr + " not confirmed"
				break
			}
		}
	}
	was := n.serving.Load()
	now := why == ""
	prev := n.blocked
	n.blocked = why
	if was != now {
		n.serving.Store(false) // no read may snapshot the old epoch as serving
		n.flush()
		n.serving.Store(now)
		if now {
			close(n.ready)
		} else {
			n.ready = make(chan struct{})
		}
	}
	n.mu.Unlock()
	if was != now {
		if now {
			n.c.log.Info("cachelayer: near tier serving", "prefixes", *n.prefixes.Load())
		} else {
			n.c.log.Warn("cachelayer: near tier bypassed until tracking is back", "why", why)
		}
		if n.hookServing != nil {
			n.hookServing(now)
		}
	} else if !now && prev != why {
		n.c.log.Debug("cachelayer: near tier still bypassed", "why", why)
	}
}

// readyChan returns a channel closed while the tier serves.
func (n *nearTier) readyChan() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ready
}

// WaitNear waits until the near tier serves (its tracking confirmed on
// every master) or ctx ends, and reports whether it serves. It returns
// false at once when no prefix is under the near tier. A service may call
// it before taking traffic; nothing requires it (until then, near keys are
// read from Redis).
func (c *Cache) WaitNear(ctx context.Context) bool {
	n := c.near.Load()
	if n == nil {
		return false
	}
	select {
	case <-n.readyChan():
		return n.serving.Load()
	case <-ctx.Done():
		return false
	}
}

// stats fills the near tier's part of s.
func (n *nearTier) stats(s *Stats) {
	s.NearHits, s.NearMisses, s.NearBypasses = n.hits.Load(), n.misses.Load(), n.bypasses.Load()
	s.NearStored, s.NearRejected = n.stored.Load(), n.rejected.Load()
	s.NearInvalidations, s.NearFlushes = n.invalidations.Load(), n.flushes.Load()
	s.NearTrackingDrops, s.NearWriteWaits = n.trackerDrops.Load(), n.settles.Load()
	s.NearEntries = int64(n.store.EstimatedSize())
	s.NearWeight = int64(n.store.WeightedSize())
	s.NearServing = n.serving.Load()
}
