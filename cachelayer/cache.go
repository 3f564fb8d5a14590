package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

// Cache is a read-through cache in front of loaders, with Redis as the
// shared store. It is safe for concurrent use. Create it with [New] or
// [Open]; a Cache without Redis (no-cache mode) passes every read to its
// loader.
type Cache struct {
	rdb    redis.UniversalClient // nil in no-cache mode
	owned  bool                  // rdb was made by Open and is closed by Close
	cfg    Config
	codec  Codec
	prefix string
	log    *slog.Logger
	br     *breaker // the breaker of a standalone or Sentinel Redis; on a Cluster, of the whole cluster until its slot table is known
	shards *shards  // per-master breakers of a Cluster; nil otherwise
	topo   *topology

	group     flightGroup              // the joinable flight of each full key
	bypass    loadRounds               // load rounds of SkipRedis reads (never answered from Redis, never older than a caller)
	notes     fillNotifier             // wakes flights waiting for another process's lease
	near      atomic.Pointer[nearTier] // the near tier, once a prefix is under it
	leasePX   any                      // LeaseTTL in ms, boxed once for the read command
	tokens    *leaseTokens             // this Cache's lease placeholders
	deadlines *readDeadlines           // OpTimeout bounds of Fetch reads without a timer each
	seq       atomic.Int64             // orders Fetch beginnings against flights' reads, loads and fills

	mu      sync.Mutex     // guards flights, closed transitions and wg.Add
	flights map[string]int // full keys with a running flight (for DeletePrefix)
	wg      sync.WaitGroup // flights that use Redis, and Health probes
	closed  atomic.Bool    // set once by Close; then the cache is in no-cache mode

	closeOnce sync.Once
	closeErr  error

	st  counters
	tel *telemetry // nil without MeterProvider and TracerProvider

	// Test hooks (nil in production): joined runs after a Fetch caller has
	// joined (or started) the flight of a key; leaseWait runs when a flight
	// starts waiting for another process's lease.
	hookJoined    func(fullKey string)
	hookLeaseWait func(fullKey string)
	hookFilled    func(fullKey string) // after a successful fill, before the flight answers
	// queued runs when a Fetch read waits in the queue of busy reads.
	hookQueued func(fullKey string)
	// leaseRenewed runs after a lease held by a slow load was extended.
	hookLeaseRenewed func(fullKey string)
	// nearNew runs when the near tier is created, before it starts (to set its hooks).
	hookNearNew func(n *nearTier)
}

// counters are the exact counts behind [Stats].
type counters struct {
	hits                 atomic.Int64 // Fetch/Get read a value or a not-found marker
	misses               atomic.Int64 // Fetch/Get read nothing usable
	loads                atomic.Int64 // loader calls
	loadsShared          atomic.Int64 // Fetch callers served by another caller's load
	leaseWaits           atomic.Int64 // flights that waited for another process's lease
	staleFillsRejected   atomic.Int64 // fills refused because the lease was voided
	corrupt              atomic.Int64 // undecodable entries replaced by Fetch
	oversize             atomic.Int64 // values not cached for size
	redisErrors          atomic.Int64 // Redis calls that failed for want of Redis
	fallbacks            atomic.Int64 // reads served by a loader because Redis failed or the breaker was open
	bypasses             atomic.Int64 // Fetch calls with SkipRedis
	invalidations        atomic.Int64 // keys deleted by Delete, DeleteFull
	invalidationFailures atomic.Int64 // Delete/DeleteFull calls that did not reach Redis
	recoveries           atomic.Int64 // breaker open → closed transitions
	notReplicated        atomic.Int64 // keys deleted on their master but not confirmed by a replica (WAIT)
}

// Stats are counters since the Cache was created: exact, not sampled.
type Stats struct {
	// Hits counts Fetch and Get calls whose own read of Redis found a value
	// or a not-found marker; Misses counts those whose read found nothing
	// usable (no key, a lease, an undecodable entry). A call whose read
	// failed counts in neither (see Fallbacks).
	Hits, Misses int64
	// Loads counts loader calls, including reloads after a rejected fill.
	Loads int64
	// LoadsShared counts Fetch callers served by a load another caller
	// started (1000 callers on one load: 999).
	LoadsShared int64
	// LeaseWaits counts flights (one per key per process at a time) that
	// waited for another process's lease.
	LeaseWaits int64
	// StaleFillsRejected counts fills refused because an invalidation
	// voided their lease while they loaded.
	StaleFillsRejected int64
	// Corrupt counts undecodable entries (garbage, another format version,
	// a key of another type) that Fetch replaced; Oversize counts loaded
	// values served but not cached because they exceed MaxValueBytes (and
	// Set calls refused for it).
	Corrupt, Oversize int64
	// RedisErrors counts Redis calls that failed for want of Redis
	// (timeouts, connection errors); redis.Nil, error replies such as
	// WRONGTYPE and the caller's own cancellation are not counted.
	RedisErrors int64
	// Fallbacks counts Fetch calls served by a loader because Redis failed
	// or the breaker was open (their own read, or their flight's).
	Fallbacks int64
	// Bypasses counts Fetch calls with FetchOptions.SkipRedis, served by a
	// loader without reading or filling Redis (credits and workflows: a
	// key whose invalidation by this process is pending, or every key
	// until the process's namespace has settled). They count in neither
	// Hits nor Misses.
	Bypasses int64
	// Invalidations counts keys deleted by Delete and DeleteFull (each key
	// whose UNLINK Redis acknowledged, whether or not it existed).
	Invalidations int64
	// InvalidationFailures counts Delete and DeleteFull calls of which
	// some key did not reach Redis (failed, or skipped while its breaker
	// was open).
	InvalidationFailures int64
	// NotReplicated counts keys that their master deleted but that no
	// replica confirmed within InvalidateWaitTimeout (the delete call
	// reported ErrNotReplicated for them).
	NotReplicated int64
	// Recoveries counts times a breaker closed again after it had opened
	// (on a Cluster, each master's breaker counts).
	Recoveries int64
	// Available is false in no-cache mode, after Close and while the
	// breaker is open; on a Cluster, while every master's breaker is open
	// (some keys may be unavailable while it is true: see BreakerOpen and
	// ShardsOpen).
	Available bool
	// BreakerOpen reports whether a breaker is open (or half-open): the
	// only one of a standalone or Sentinel Redis, any master's on a
	// Cluster.
	BreakerOpen bool
	// ShardsOpen is how many masters of a Cluster have an open breaker
	// (see [Cache.Shards]); 0 otherwise.
	ShardsOpen int

	// The near tier (all zero while it is off; see [NearConfig]).
	// NearHits counts Fetch calls answered from memory; NearMisses those
	// of a near key the tier serves but did not hold; NearBypasses those of
	// a near key while the tier was not serving (tracking not confirmed, a
	// breaker open). A near miss or bypass then counts in Hits or Misses
	// like any other read.
	NearHits, NearMisses, NearBypasses int64
	// NearStored counts values read from Redis that the tier kept;
	// NearRejected those it refused because an invalidation or a flush came
	// between the read and the store (the race that would serve an old
	// value), or because the tier stopped serving meanwhile.
	NearStored, NearRejected int64
	// NearInvalidations counts keys Redis reported changed (tracking
	// messages); NearFlushes counts times the tier dropped everything (a
	// FLUSHDB, a tracking connection lost or regained, a breaker opening
	// or closing, a topology change, DeletePrefix); NearTrackingDrops counts
	// tracking connections lost after they were confirmed.
	NearInvalidations, NearFlushes, NearTrackingDrops int64
	// NearWriteWaits counts changes of near keys that waited MaxLag before
	// returning (see NearConfig.NoWriteWait).
	NearWriteWaits int64
	// NearEntries is how many values the tier holds now; NearWeight their
	// weight against NearConfig.MaxBytes (each at least MaxBytes/MaxEntries).
	NearEntries, NearWeight int64
	// NearServing reports whether the tier answers from memory now.
	NearServing bool
}

// Health is the result of a PING of Redis.
type Health struct {
	Healthy bool          // Redis answered the PING
	Latency time.Duration // how long the PING took (0 when not attempted)
	Err     string        // why not healthy; "cache disabled" in no-cache mode
}

// New returns a Cache on rdb (standalone, Cluster or failover client).
// rdb nil means no-cache mode; cfg nil means all defaults. New never closes
// rdb. Reads are bounded by Config.OpTimeout only if rdb has
// ContextTimeoutEnabled; New logs a warning when it can see that it has not.
// New panics on a negative duration in cfg.
func New(rdb redis.UniversalClient, cfg *Config) *Cache {
	conf := withDefaults(cfg)
	c := &Cache{
		rdb:       rdb,
		cfg:       conf,
		codec:     conf.Codec,
		prefix:    conf.Prefix,
		log:       conf.Logger,
		flights:   map[string]int{},
		leasePX:   strconv.FormatInt(max(conf.LeaseTTL.Milliseconds(), 1), 10),
		tokens:    newLeaseTokens(),
		deadlines: newReadDeadlines(conf.OpTimeout),
	}
	c.notes.channel = fillChannel(conf.Prefix)
	c.tel = newTelemetry(c, &conf)
	c.br = c.newBreaker(conf.Logger)
	if rdb != nil && !contextTimeoutEnabled(rdb) {
		c.log.Warn("cachelayer: redis client lacks ContextTimeoutEnabled; a hung Redis can stall reads beyond OpTimeout",
			"op_timeout", conf.OpTimeout)
	}
	switch r := rdb.(type) {
	case *redis.ClusterClient:
		c.shards = &shards{cc: r, mk: func(addr string) *breaker {
			return c.newBreaker(conf.Logger.With("redis_master", addr))
		}}
		c.topo = newTopology(c, conf.TopologyInterval)
		if r.Options().ClusterStateReloadInterval > 10*time.Second {
			c.log.Warn("cachelayer: cluster client reloads its slot table rarely; a promoted replica may go unused for that long",
				"cluster_state_reload_interval", r.Options().ClusterStateReloadInterval, "recommended", RecommendedClusterStateReloadInterval)
		}
	case nil:
	default: // a standalone or Sentinel-managed master, or a Ring (whose epoch counts breaker recoveries only)
		c.topo = newTopology(c, conf.TopologyInterval)
	}
	if c.topo != nil {
		c.topo.start() // learn the masters and their replicas before the first delete
	}
	if p := conf.Near.Prefix; p != "" {
		if err := c.EnableNear(p); err != nil {
			c.log.Warn("cachelayer: near tier not enabled", "prefix", p, "err", err)
		}
	}
	return c
}

// newBreaker returns a breaker with the cache's settings, whose closing
// after an outage counts in Recoveries, advances the topology epoch and
// checks the topology.
func (c *Cache) newBreaker(logger *slog.Logger) *breaker {
	return &breaker{
		reads:     readBatcher{max: max(c.cfg.ReadsInFlight, 0)}, // negative: 0, no limit
		threshold: c.cfg.BreakerFailures,
		cooldown:  c.cfg.BreakerCooldown,
		probeTTL:  c.cfg.BreakerCooldown + c.cfg.InvalidateTimeout + c.cfg.OpTimeout,
		logger:    logger,
		onOpen: func() {
			if n := c.near.Load(); n != nil {
				n.reevaluate()
			}
		},
		onRecover: func() {
			c.st.recoveries.Add(1)
			if n := c.near.Load(); n != nil {
				n.reevaluate()
			}
			if c.topo != nil {
				c.topo.bump("a circuit breaker closed after an outage")
				c.topo.forceCheck()
			}
		},
	}
}

// RecommendedClusterStateReloadInterval is the ClusterStateReloadInterval
// that Open gives the cluster clients it builds, and that clients passed to
// New should have: go-redis then reloads its slot table at least that often
// under traffic (one CLUSTER SLOTS), so a promoted replica is used within
// seconds even where no error told the client (go-redis's default is 60 s).
const RecommendedClusterStateReloadInterval = 2 * time.Second

// contextTimeoutEnabled reports whether rdb honours context deadlines on
// socket reads, when it can tell (true when it cannot).
func contextTimeoutEnabled(rdb redis.UniversalClient) bool {
	switch r := rdb.(type) {
	case *redis.Client:
		return r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return r.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return r.Options().ContextTimeoutEnabled
	}
	return true
}

// Open returns a Cache on the Redis given by redisURL, configured so that
// OpTimeout really bounds each call: ContextTimeoutEnabled, one dial attempt
// of at most max(2×OpTimeout, 250 ms), at most one retry. A standalone
// Redis is redis://[user:password@]host:port/db (rediss:// for TLS); a
// Redis Cluster is given by its seed nodes in go-redis's cluster URL form,
// redis://[user:password@]host:port?addr=host2:port2&addr=host3:port3 (one or
// more addr parameters mark a cluster URL), and gets a client that reloads
// its slot table every [RecommendedClusterStateReloadInterval]. An empty
// redisURL means no-cache mode. Open fails only on a bad URL (ErrInvalid;
// the error never contains the password); an unreachable Redis is logged
// and handled like any outage. Close closes the client Open made. For
// clientTimeouts are the dial and read/write timeouts of a client Open
// makes: dials get twice OpTimeout (at least 250 ms), and a socket read or
// write is bounded by the longest call the cache makes (OpTimeout for
// reads, InvalidateTimeout for deletes); each call's own context is
// tighter.
func clientTimeouts(conf *Config) (dial, readWrite time.Duration) {
	return max(2*conf.OpTimeout, 250*time.Millisecond), max(conf.OpTimeout, conf.InvalidateTimeout)
}

// Sentinel, build the client and use [New].
func Open(ctx context.Context, redisURL string, cfg *Config) (*Cache, error) {
	conf := withDefaults(cfg)
	if redisURL == "" {
		return New(nil, &conf), nil
	}
	var rdb redis.UniversalClient
	if isClusterURL(redisURL) {
		opts, err := redis.ParseClusterURL(redisURL)
		if err != nil {
			return nil, fmt.Errorf("cachelayer: %w: redis cluster url %s: %s", ErrInvalid, redact.URL(redisURL), redact.Reason(redisURL, err))
		}
		dial, rw := clientTimeouts(&conf)
		opts.ContextTimeoutEnabled, opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = true, dial, rw, rw
		opts.DialerRetries, opts.MaxRetries, opts.DisableIdentity = 1, 1, true
		opts.MaxRedirects = 2 // a MOVED after a failover, and one retry
		opts.ClusterStateReloadInterval = RecommendedClusterStateReloadInterval
		rdb = redis.NewClusterClient(opts)
	} else {
		opts, err := redis.ParseURL(redisURL)
		if err != nil {
			return nil, fmt.Errorf("cachelayer: %w: redis url %s: %s", ErrInvalid, redact.URL(redisURL), redact.Reason(redisURL, err))
		}
		dial, rw := clientTimeouts(&conf)
		opts.ContextTimeoutEnabled, opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = true, dial, rw, rw
		// DisableIdentity: no CLIENT SETINFO round trips on each new connection.
		opts.DialerRetries, opts.MaxRetries, opts.DisableIdentity = 1, 1, true
		rdb = redis.NewClient(opts)
	}
	c := New(rdb, &conf)
	c.owned = true

	pctx, cancel := context.WithTimeout(ctx, max(conf.OpTimeout, 250*time.Millisecond))
	defer cancel()
	if err := c.rdb.Ping(pctx).Err(); err != nil {
		c.log.Warn("cachelayer: redis not answering at start; reads go to the loaders until it does",
			"redis", redact.URL(redisURL), "err", redact.String(err.Error(), redisURL))
	}
	return c, nil
}

// isClusterURL reports whether redisURL names cluster seed nodes: it has
// one or more addr query parameters.
func isClusterURL(redisURL string) bool {
	u, err := url.Parse(redisURL)
	if err != nil {
		return false
	}
	return u.Query().Has("addr")
}

// FullKey returns the key as stored in Redis: the prefix followed by key.
func (c *Cache) FullKey(key string) string { return c.prefix + key }

// Available reports whether the cache uses Redis now: Redis configured,
// the Cache not closed, and the breaker not open.
// On a Cluster it is false only while every master's breaker is open.
func (c *Cache) Available() bool {
	return c.rdb != nil && !c.closed.Load() && !c.allBreakersOpen()
}

// Stats returns the counters since New. On a Cluster with an open breaker
// it also starts a topology check when the last is older than
// TopologyInterval (on a goroutine of its own), so that the breaker of a
// master that left the topology is dropped even while no call uses it.
func (c *Cache) Stats() Stats {
	if c.shards != nil && !c.noCache() && c.anyBreakerOpen() {
		c.topo.maybeCheck()
	}
	s := Stats{
		Hits:                 c.st.hits.Load(),
		Misses:               c.st.misses.Load(),
		Loads:                c.st.loads.Load(),
		LoadsShared:          c.st.loadsShared.Load(),
		LeaseWaits:           c.st.leaseWaits.Load(),
		StaleFillsRejected:   c.st.staleFillsRejected.Load(),
		Corrupt:              c.st.corrupt.Load(),
		Oversize:             c.st.oversize.Load(),
		RedisErrors:          c.st.redisErrors.Load(),
		Fallbacks:            c.st.fallbacks.Load(),
		Bypasses:             c.st.bypasses.Load(),
		Invalidations:        c.st.invalidations.Load(),
		InvalidationFailures: c.st.invalidationFailures.Load(),
		Recoveries:           c.st.recoveries.Load(),
		NotReplicated:        c.st.notReplicated.Load(),
		Available:            c.Available(),
		BreakerOpen:          c.anyBreakerOpen(),
		ShardsOpen:           c.shardsOpen(),
	}
	if n := c.near.Load(); n != nil {
		n.stats(&s)
	}
	return s
}

// shardsOpen is Stats.ShardsOpen.
func (c *Cache) shardsOpen() int {
	if c.shards == nil {
		return 0
	}
	_, open := c.shards.state()
	return open
}

// healthTimeout bounds Health whatever the client's settings.
const healthTimeout = time.Second

// Health pings Redis and reports its latency. It returns within 1 s (or
// sooner if ctx ends) even if Redis hangs, and does not consult the breaker.
// On a Cluster it pings every master (concurrently): Healthy only if all
// answered, Latency the slowest, Err naming the masters that did not. In
// no-cache mode it reports Healthy false, Err "cache disabled".
func (c *Cache) Health(ctx context.Context) Health {
	if c.rdb == nil {
		return Health{Err: "cache disabled"}
	}
	if !c.enter() {
		return Health{Err: "cache closed"}
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	// The PING runs apart so that a client without ContextTimeoutEnabled
	// cannot hold Health past its deadline; Close waits for it.
	go func() {
		defer c.wg.Done()
		done <- c.ping(ctx)
	}()
	select {
	case err := <-done:
		lat := time.Since(start)
		if err != nil {
			return Health{Latency: lat, Err: err.Error()}
		}
		return Health{Healthy: true, Latency: lat}
	case <-ctx.Done():
		return Health{Latency: time.Since(start), Err: "ping: " + ctx.Err().Error()}
	}
}

// ping is Health's PING: of the one Redis, or of every master of a Cluster.
func (c *Cache) ping(ctx context.Context) error {
	cc, ok := c.rdb.(*redis.ClusterClient)
	if !ok {
		return c.rdb.Ping(ctx).Err()
	}
	var mu sync.Mutex
	var errs []error
	err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		if err := m.Ping(ctx).Err(); err != nil {
			mu.Lock()
			errs = append(errs, fmt.Errorf("master %s: %w", m.Options().Addr, err))
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// Close stops the cache from using Redis, waits for flights that are
// filling and for Health probes, and closes the client if Open made it.
// Afterwards the cache behaves as in no-cache mode. It is idempotent.
func (c *Cache) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed.Store(true)
		c.mu.Unlock()
		c.notes.close()
		if n := c.near.Load(); n != nil {
			n.close()
		}
		c.wg.Wait()
		c.tel.close()
		if c.owned && c.rdb != nil {
			c.closeErr = c.rdb.Close()
		}
	})
	return c.closeErr
}

// enter registers a user of Redis that Close must wait for; it reports
// false (registering nothing) once Close has begun.
func (c *Cache) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return false
	}
	c.wg.Add(1)
	return true
}

// outcome classifies err, the result of a Redis call made for a caller
// whose context is ctx, and feeds the breaker. It returns nil or redis.Nil
// unchanged; an error reply of Redis that says nothing about its health
// (WRONGTYPE, not an integer…) unchanged; the caller's own context error
// (not a Redis failure); or, for a failure of Redis, an error that Is
// ErrUnavailable (counted in RedisErrors).
//
// outcome feeds the Cache's own breaker, for calls that name no key;
// outcomeFor feeds the breaker of a key's master. On a Cluster a failure
// also makes go-redis reload its slot table (at most every 250 ms), so that a
// replica promoted in a failed master's place is used within moments.
func (c *Cache) outcome(ctx context.Context, err error) error { return c.outcomeOn(ctx, c.br, err) }

// outcomeOn is outcome feeding breaker b.
func (c *Cache) outcomeOn(ctx context.Context, b *breaker, err error) error {
	if err == nil || err == redis.Nil {
		b.success()
		return err
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		b.neutral()
		return ctxErr
	}
	var reply redis.Error
	if errors.As(err, &reply) && !unhealthyReply(err) {
		b.success()
		if c.shards != nil && (redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK")) {
			c.shards.reload()
		}
		return err
	}
	c.st.redisErrors.Add(1)
	b.failure(err)
	if c.shards != nil && c.shards.reload() {
		c.topo.forceCheck()
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// unhealthyReply reports whether an error reply means Redis cannot serve
// (loading, failing over, out of memory, script busy, auth…).
func unhealthyReply(err error) bool {
	for _, p := range []string{"LOADING", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN",
		"BUSY", "NOAUTH", "WRONGPASS", "NOPERM", "OOM", "MISCONF", "ERR max number of clients"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// opCtx returns ctx bounded by OpTimeout.
func (c *Cache) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.OpTimeout)
}

// errNoCache is what calls that cannot fall back return in no-cache mode.
var errNoCache = fmt.Errorf("%w: no-cache mode", ErrUnavailable)

// errBreakerOpen is what calls that cannot fall back return while the
// breaker refuses calls.
var errBreakerOpen = fmt.Errorf("%w: circuit breaker open", ErrUnavailable)

// unavailableErr says why Redis cannot be used now.
func (c *Cache) unavailableErr() error {
	if c.rdb == nil || c.closed.Load() {
		return errNoCache
	}
	return errBreakerOpen
}

// noCache reports whether the cache runs without Redis (no-cache mode or
// closed).
func (c *Cache) noCache() bool { return c.rdb == nil || c.closed.Load() }

// checkKey validates a key passed in by a caller.
func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key of %d bytes exceeds %d", ErrInvalid, len(key), MaxKeyLen)
	}
	return nil
}

// checkTTL validates a ttl passed in by a caller.
func checkTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("%w: ttl %v must be positive", ErrInvalid, ttl)
	}
	return nil
}

// jittered returns ttl shortened by a random fraction in [0, Jitter], in
// whole milliseconds and at least 1 ms (Redis PX).
func (c *Cache) jittered(ttl time.Duration) int64 {
	ms := ttl.Milliseconds()
	if span := int64(float64(ms) * c.cfg.Jitter); span > 0 {
		ms -= rand.Int64N(span + 1)
	}
	return max(ms, 1)
}

// notFoundError is returned for a cached not-found marker.
type notFoundError struct{ key string }

func (e *notFoundError) Error() string        { return "cachelayer: " + e.key + ": not found (cached)" }
func (e *notFoundError) Is(target error) bool { return target == ErrNotFound }
