// Package cachelayer is a read-through (cache-aside) cache with Redis as the
// shared store, for values loaded from a slower source of truth such as
// Postgres. It knows nothing of what it caches: callers pass a key, a TTL and
// a loader to [Fetch].
//
// # What it promises
//
//   - One load per key per process: concurrent Fetch calls of a key share one
//     flight (a singleflight of this package's own), also when Redis is down and
//     for reads that skip Redis (FetchOptions.SkipRedis, used while a key's
//     invalidation is pending). The load runs detached from the callers, each
//     load bounded by Config.LoadTimeout of its own; each caller waits on its
//     own context, so one cancelled caller fails no other. Loader errors
//     reach the callers of that flight and are never cached, except those
//     that are [ErrNotFound] (negative caching). A loader that panics fails
//     the calls that shared it with an error that Is [ErrLoaderPanic]
//     (logged with its stack); it never crashes the process and leaves no
//     lease behind. Every caller of a shared flight gets a value of its own
//     (the first the loaded value, the others copies decoded from the codec
//     bytes), so one request changing a slice or map of its answer changes
//     no other's.
//   - One load per key across processes: the read itself takes the lease.
//     Every Fetch read is one command, SET key <lease> NX GET PX LeaseTTL:
//     it returns a value (a hit: one round trip), another's lease, or nil —
//     the key was empty and now holds this caller's lease (a placeholder held
//     in the key, which can never decode as a value; works on Redis Cluster
//     without hash tags). Only the holder loads, and fills at once: a miss is
//     two round trips and one load. The others wait up to Config.LeaseWait
//     for its fill, then load without filling. A waiting process does not
//     poll: it marks the lease "has waiters" (one round trip) and the
//     holder's fill script publishes the key to the Cache's one lazily made
//     subscription; a slow re-check (LeaseWait/4) covers a lost message.
//   - No stale set, no stale read: the fill is a compare-and-set that succeeds
//     only while the holder's lease is still in the key. While the load
//     runs, its holder renews the lease (every LeaseTTL/3), so a load slower
//     than LeaseTTL but within LoadTimeout keeps it and fills; only an
//     invalidation makes a fill fail (StaleFillsRejected). [Cache.Delete]
//     removes leases, so a value loaded before an invalidation is never
//     written after it; a rejected fill loads again before answering its
//     callers; and Delete makes later reads in this process start a new
//     flight. With Redis healthy, no read that begins after an invalidation
//     completed returns a value loaded before it, in any process: a read
//     whose own Redis read succeeded never takes an answer whose source (a
//     Redis read, a fill, a load — fallback loads of its process included)
//     began before the read did; it starts over instead.
//   - No reply older than its read: a read is sent on its own, or — while
//     Config.ReadsInFlight reads are already on their way — waits and goes
//     out with the other waiting reads in one pipeline, reads of one key
//     sharing one command. A read is never joined to a command already sent,
//     so no caller gets a reply to a read sent before it arrived. No
//     goroutine is started per read or per pipeline. In degraded modes — the breaker open, the read failing, or
//     no-cache mode — a read is served by a load shared only within the
//     process and may return a value loaded at most one load duration before
//     it began. A read whose flight exhausted its lease wait loads without
//     Redis (shared, and never older than the read).
//   - Bounded latency: with a Cache from [Open], a read waits on Redis at
//     most Config.OpTimeout (a cache from [New] only if its client has
//     ContextTimeoutEnabled; a read waits for a pooled connection at most
//     OpTimeout/16 longer — the read's context is a shared deadline window,
//     not a timer per read, which a cancelled caller does not close: the
//     caller's Fetch still returns at once from the queue of waiting reads,
//     and at the latest at OpTimeout from a read already sent). Redis
//     failures are never read failures: the read falls back to its loader. After Config.BreakerFailures consecutive
//     failures a circuit breaker skips Redis; after Config.BreakerCooldown
//     one probe goes through, and success closes it. Recovery is automatic.
//     redis.Nil and the caller's own cancellation are not failures.
//   - Values are stored as one header byte (format version, kind) and the
//     [Codec]'s bytes (JSON by default, without HTML escaping, so a
//     json.RawMessage round-trips byte for byte; a [CompactMarshaler] such
//     as credits.Balance in its own compact form). The value of a
//     [Versioned] type carries its version between header and codec bytes,
//     which lets [Replace] — an invalidation that stores the new value where
//     Redis holds an older version, and deletes as Delete does otherwise —
//     tell an older copy from a newer one. Fetch replaces undecodable entries,
//     entries of another format version and keys of another type (Corrupt);
//     values larger than Config.MaxValueBytes are served but not cached.
//     Each fill's TTL is shortened at random by up to Config.Jitter.
//   - Exact [Stats], atomic counters; warnings through log/slog on state
//     changes only; [Cache.Close] waits for fills and leaks no goroutine.
//
// # Unavailable Redis, call by call
//
// In no-cache mode (Open with "", New with a nil client, or after Close):
// Fetch calls its loader (still one flight per key); Get and Exists return
// false, nil; Delete and DeletePrefix return nil and 0, nil (DeleteFull,
// meant for outboxes, returns an error that Is ErrUnavailable: nothing
// reached Redis); Set, Incr and
// TTL return [ErrUnavailable]; Allow returns true and ErrUnavailable (it
// fails open; the caller decides); Health reports Healthy false with Err
// "cache disabled". When Redis fails or the breaker is open, the same, except
// that Get, Exists, Delete and DeletePrefix also return an error that Is
// ErrUnavailable.
//
// # Redis Cluster and failover
//
// On a Cluster each master has its own breaker, so a dead master stops only
// the calls of its own slots; failures make go-redis reload its slot table.
// Deletes wait (Redis WAIT, same pipeline) for a replica where the master
// has one and report keys no replica confirmed with [ErrNotReplicated];
// [Cache.DeleteFullEach] reports per key. [Cache.TopologyEpoch] changes when
// a failover, restart or outage may have lost acknowledged deletes.
//
// # Near tier
//
// [NearConfig] (off by default; [Cache.EnableNear] or Config.Near.Prefix
// turns it on for a key prefix) keeps decoded values in process memory in
// front of Redis, so a repeated Fetch of such a key costs no round trip. Each
// process keeps one tracking connection per master (CLIENT TRACKING BCAST,
// RESP2, redirected to itself) on which Redis reports every change of those
// keys, by anyone. A copy is stored only if no invalidation of its key came
// between its read and its store; the tier serves only while every master
// has answered a PING sent less than NearConfig.MaxLag ago (Redis answers
// it after every invalidation it sent before), and flushes on FLUSHDB,
// reconnects, breaker changes and topology changes. A Delete, Set or
// Replace of a near key returns MaxLag after Redis has it, so the freshness
// promises above hold with the tier on (NearConfig.NoWriteWait trades that
// for a window of at most MaxLag). Each caller gets a value of its own: a
// type with a Clone() T method is cloned, a type without pointers, slices,
// maps or interfaces is shared, any other is decoded per hit.
//
// # Keys
//
// Keys are passed without the namespace (Config.Prefix, "ghl:" by default),
// which the cache adds. Counters of [Cache.Incr] and [Cache.Allow] are plain
// Redis integers: keep them under keys that Fetch never reads, such as
// "rate:{userId}:{endpoint}".
//
// # go-redis's own log lines
//
// The cache logs through Config.Logger. go-redis also logs by itself, through
// one process-wide logger writing to stderr ("failed to dial", about once a
// second per client while Redis is down). The library never changes that
// global; a service routes those lines to its logger with
// redis.SetLogger([RedisLogger](logger)), which also masks passwords.
package cachelayer
