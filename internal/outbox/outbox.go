package outbox

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/metric"

	"github.com/ghl-agency/ghlcache/internal/dbq"
)

// Invalidator deletes already-prefixed cache keys; *cachelayer.Cache is one.
//
// FullKey prefixes a domain's key as the cache stores it.
//
// DeleteFullEach deletes keys with one outcome per key: a nil slice means
// every key was deleted; otherwise errs[i] is nil only when fullKeys[i]'s
// delete reached Redis (and is as durable as the cache can make it), and
// not nil when it failed or was not attempted (its shard unreachable, its
// breaker open, no-cache mode, a closed cache).
//
// DeleteFull deletes keys and returns nil only when every key's delete
// reached Redis. The outbox calls it only while the Invalidator is not
// Enabled, after a write, where it must make the key's in-process loads
// unjoinable (as cachelayer.Cache.DeleteFull does), so that a read that
// begins after the write does not share a load that began before it.
//
// TopologyEpoch is a number that changes whenever the cache sees its Redis
// change in a way that may have lost acknowledged deletes (a new master, a
// breaker closing after an outage). It is read often: it must be cheap.
//
// DeleteFullPrefix deletes every key that starts with a full key prefix
// (an outbox row's whole_prefix cache_key: a TRUNCATE, a bulk change) and
// makes their in-process loads unjoinable; nil only when every master was
// scanned.
//
// Enabled reports whether it can reach Redis at all: false for a cache in
// no-cache mode or closed. While it is false the outbox counts nothing as
// delivered and claims no rows (which would hold them from instances that
// can delete their keys).
type Invalidator interface {
	FullKey(key string) string
	DeleteFull(ctx context.Context, fullKeys ...string) error
	DeleteFullEach(ctx context.Context, fullKeys []string) []error
	DeleteFullPrefix(ctx context.Context, fullPrefix string) (int64, error)
	TopologyEpoch() uint64
	Enabled() bool
}

// Config configures an Outbox. Zero fields take the defaults.
type Config struct {
	Domain       string        // cache_outbox.domain this outbox writes and sweeps; required
	Tables       []string      // the tables whose triggers write the domain's rows (see namespace.go); none: nothing to wait for when it registers
	Interval     time.Duration // between sweeps while there is work, 1 s
	IdleInterval time.Duration // between sweeps while there is none, 2 s (at least Interval)
	Batch        int           // rows claimed per transaction, and rows per page of re-deletes, 500
	MaxAge       time.Duration // the domain TTL + 1 min: how long done rows are kept for re-deletes, and how long a waiting row stays after this process first saw it while its key cannot be deleted
	Logger       *slog.Logger  // slog.Default()

	FlushInterval time.Duration // how long a done row waits to be marked with others, 100 ms
	FlushMax      int           // marked at once as soon as this many are queued, 1000
	EpochPoll     time.Duration // how often the sweeper looks at TopologyEpoch (no I/O) and whether a sweep is due, min(Interval, 250 ms)

	// The LISTEN connection (see listen): NoListen turns it off (the
	// sweeper only polls); ListenKeepalive is how long it waits for a
	// notification before it pings the server, 30 s; ListenRetry and
	// ListenRetryMax bound the backoff between redials, 100 ms to 5 s.
	NoListen        bool
	ListenKeepalive time.Duration
	ListenRetry     time.Duration
	ListenRetryMax  time.Duration

	// NoNamespace keeps the outbox out of cache_namespaces (an operator's
	// one-shot sweep: it caches nothing, so no trigger needs to write rows
	// for it).
	NoNamespace bool

	Now func() time.Time // the clock MaxAge and the sweep schedule are measured on, time.Now; tests set it

	// MeterProvider, if set, gets the domain's outbox gauges (see
	// registerGauges); nil: none.
	MeterProvider metric.MeterProvider
}

// Stats describes an outbox domain: the table's waiting rows (all
// instances) and this process's counters.
type Stats struct {
	Depth     int64         // rows waiting in the table for their key's delete (done rows kept for re-deletes do not count)
	OldestAge time.Duration // age (by created_at) of the oldest waiting row, 0 when none
	Pending   int           // keys whose invalidation this process is still waiting for
	Swept     int64         // rows this process's sweeper marked done after deleting their key
	Dropped   int64         // moot rows this process's sweeper dropped without a delete (their deletes failed)
	Cleaned   int64         // done rows this process removed after keeping them MaxAge
	Redeleted int64         // keys this process deleted again after a topology change
	Failures  int64         // sweeps (or re-delete passes) that could not reach Redis for some key, or Postgres

	Listening     bool  // this process's LISTEN connection is up: changes made outside the library are swept as soon as they commit
	Notifications int64 // notifications it received (each woke a sweep)
	ListenDrops   int64 // times the LISTEN connection failed or was lost (redialled with backoff)
	Settled       bool  // this process's namespace is registered for the tables' triggers and trusted; until then every read goes to Postgres
}

// Outbox writes, tracks and sweeps one domain's invalidations. It is safe
// for concurrent use. Close stops its sweeper.
type Outbox struct {
	pool *pgxpool.Pool
	inv  Invalidator
	cfg  Config
	log  *slog.Logger

	mu      sync.Mutex          // guards pending and byKey
	pending map[int64]string    // outbox row id → key, for rows this process wrote and has not seen done
	byKey   map[string]int      // key → number of pending rows for it
	npend   atomic.Int64        // len(pending), read without mu on the hot path
	gauges  metric.Registration // the outbox gauges' callback, nil without a MeterProvider

	swept, dropped, cleaned, redeleted, failures atomic.Int64

	sweepMu     sync.Mutex           // serialises sweeps and re-delete passes; guards the fields below
	seen        map[int64]time.Time  // row id → when a sweep that could not delete keys first saw it waiting (after its commit); at most seenPerBatch × Batch rows
	seenAfter   int64                // the row id after which the next look for old rows starts; 0: from the first
	lastSweep   time.Time            // when the last sweep began (cfg.Now)
	busy        bool                 // the last sweep found rows or failed (or none ran yet): sweep again after Interval, not IdleInterval
	epoch       uint64               // the TopologyEpoch whose re-delete pass completed (New: the epoch at New)
	retry       map[string]time.Time // key → when its re-delete first failed; retried every sweep until it succeeds or is MaxAge old
	retryPrefix map[string]time.Time // the same for whole_prefix rows' key prefixes
	repass      bool                 // a pass could not remember all its failures (more than maxRetries): run it again
	pass        *redeletePass        // the re-delete pass under way, nil when none

	doneMu   sync.Mutex    // guards doneIDs; held while an invalidation checks the epoch and queues its row (see queueDone)
	doneIDs  []int64       // rows whose key was deleted, to mark done
	doneWake chan struct{} // capacity 1: the marker has work (first id queued, or FlushMax reached)
	flushMu  sync.Mutex    // held for a whole flush, so flushDone returns only once every id queued before it is marked (or failed)

	prefix    string        // the cache's key prefix: the namespace registered in cache_namespaces
	register  bool          // the namespace is registered (the Invalidator was Enabled at New)
	settled   atomic.Bool   // registered, and every transaction in progress at the registration has ended
	waitFor   []string      // guarded by sweepMu: while not settled, the transactions (virtual ids) that must end first
	refreshed time.Time     // guarded by sweepMu: the last successful registration or refresh (cfg.Now)
	wake      chan struct{} // capacity 1: a notification (or a LISTEN reconnection) asks for a sweep now

	listening, listenFailing   atomic.Bool
	notifications, listenDrops atomic.Int64

	stop      chan struct{}
	wg        sync.WaitGroup // the sweeper, the marker and the listener
	closeOnce sync.Once
	failing   atomic.Bool // last step failed; logs once per state change
}

// New returns an Outbox for cfg.Domain and starts its sweeper and its
// marker goroutines.
func New(pool *pgxpool.Pool, inv Invalidator, cfg Config) *Outbox {
	if cfg.Domain == "" {
		panic("outbox: Config.Domain is required")
	}
	if cfg.Interval < 0 || cfg.IdleInterval < 0 || cfg.Batch < 0 || cfg.MaxAge < 0 ||
		cfg.FlushInterval < 0 || cfg.FlushMax < 0 || cfg.EpochPoll < 0 {
		panic("outbox: negative Config value")
	}
	cfg.Interval = cmp.Or(cfg.Interval, time.Second)
	cfg.IdleInterval = max(cmp.Or(cfg.IdleInterval, 2*time.Second), cfg.Interval)
	cfg.Batch = cmp.Or(cfg.Batch, 500)
	cfg.MaxAge = cmp.Or(cfg.MaxAge, 6*time.Minute)
	cfg.FlushInterval = cmp.Or(cfg.FlushInterval, 100*time.Millisecond)
	cfg.FlushMax = cmp.Or(cfg.FlushMax, 1000)
	cfg.EpochPoll = cmp.Or(cfg.EpochPoll, min(cfg.Interval, 250*time.Millisecond))
	if cfg.ListenKeepalive < 0 || cfg.ListenRetry < 0 || cfg.ListenRetryMax < 0 {
		panic("outbox: negative Config value")
	}
	cfg.ListenKeepalive = cmp.Or(cfg.ListenKeepalive, 30*time.Second)
	cfg.ListenRetry = cmp.Or(cfg.ListenRetry, 100*time.Millisecond)
	cfg.ListenRetryMax = max(cmp.Or(cfg.ListenRetryMax, 5*time.Second), cfg.ListenRetry)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	o := &Outbox{
		pool: pool, inv: inv, cfg: cfg,
		log:         cmp.Or(cfg.Logger, slog.Default()).With("outbox", cfg.Domain),
		pending:     make(map[int64]string),
		byKey:       make(map[string]int),
		seen:        make(map[int64]time.Time),
		retry:       make(map[string]time.Time),
		retryPrefix: make(map[string]time.Time),
		lastSweep:   cfg.Now(),
		busy:        true, // rows this instance left before a restart are found after Interval
		epoch:       inv.TopologyEpoch(),
		stop:        make(chan struct{}),
		doneWake:    make(chan struct{}, 1),
		wake:        make(chan struct{}, 1),
		prefix:      inv.FullKey(""),
		register:    inv.Enabled() && !cfg.NoNamespace,
	}
	if o.register {
		o.registerAtNew()
	} else {
		o.settled.Store(true) // it caches nothing (no Redis, or an operator's sweep)
	}
	o.wg.Add(2)
	go o.run()
	go o.runMarker()
	if !cfg.NoListen && o.register {
		o.wg.Add(1)
		go o.listen()
	}
	if err := o.registerGauges(cfg.MeterProvider); err != nil {
		o.log.Warn("outbox: gauges not reported", "err", err)
	}
	return o
}

// Invalidation is an outbox row that a change wrote in its transaction, as
// [Outbox.Record] returns it. The zero Invalidation is no row.
type Invalidation struct {
	ID  int64  // the cache_outbox row
	Key string // the full (prefixed) cache key it names
}

// Record writes the outbox row that invalidates key (unprefixed, as the
// domain builds it) inside tx, the transaction of the change that makes the
// cached value stale, so the invalidation is durable exactly when the
// change is. One INSERT on tx, no round trip of its own. After the commit
// (or a commit whose outcome is unknown) pass the result to
// [Outbox.Invalidate].
//
// On a nil *Outbox (a store with no cache in front) it writes nothing and
// returns the zero Invalidation.
func (o *Outbox) Record(ctx context.Context, tx pgx.Tx, key string) (Invalidation, error) {
	if o == nil {
		return Invalidation{}, nil
	}
	full := o.inv.FullKey(key)
	id, err := dbq.New(tx).CacheOutboxInsert(ctx, dbq.CacheOutboxInsertParams{Domain: o.cfg.Domain, CacheKey: full})
	if err != nil {
		return Invalidation{}, fmt.Errorf("outbox: record: %w", err)
	}
	return Invalidation{ID: id, Key: full}, nil
}

// Invalidate runs after the commit that wrote inv's row (or one whose
// outcome is unknown: if it did not commit, there is no row and the pending
// mark clears at the next sweep); the zero Invalidation does nothing. It
// deletes the key from the cache; when that succeeded it queues the row to
// be marked done (in a batch, off the write path). When the delete fails
// or is not attempted (Redis or the key's shard unavailable, its breaker
// open) the row keeps waiting for the sweeper and the key is marked
// pending before Invalidate returns, so this process reads it from
// Postgres until a sweep delivers it. So does a delete during which the
// cache's TopologyEpoch changed: it may have reached a master that lost
// it, and the sweeper deletes the key again on the new topology.
// Invalidate ignores ctx's cancellation (the change has committed; its
// invalidation must still happen) and is bounded by the Invalidator's own
// timeout.
//
// An Invalidation of a row whose id the writer never learnt
// ([Outbox.Unrecorded]: a negative ID no row has) is handled alike: marking
// "its" row done marks nothing, and its pending mark clears at the next
// sweep; the row, if it committed, waits for a sweep.
//
// While the Invalidator is not Enabled (no-cache mode, closed cache) the
// row stays for an instance that can delete the key, and nothing is marked
// pending: such a process reads from Postgres anyway, and a mark would live
// until another instance swept the row.
func (o *Outbox) Invalidate(ctx context.Context, inv Invalidation) {
	o.InvalidateWith(ctx, inv, nil)
}

// InvalidateWith is [Outbox.Invalidate] with replace, when not nil, in
// place of the key's delete: an invalidation that stores the new value
// where Redis holds an older one (cachelayer.ReplaceFull), with the same
// bookkeeping — the row is done, and the key no longer pending, only once
// replace reported success.
func (o *Outbox) InvalidateWith(ctx context.Context, inv Invalidation, replace func(ctx context.Context, fullKey string) error) {
	if inv.ID == 0 {
		return
	}
	key, id := inv.Key, inv.ID
	ctx = context.WithoutCancel(ctx)
	if !o.inv.Enabled() {
		_ = o.inv.DeleteFull(ctx, key) // reaches no Redis; forgets the key's in-process loads
		return
	}
	// The key is marked pending only if the delete fails: until then the
	// write has not returned, so a read of the key that this process makes
	// meanwhile overlaps it and may answer from Redis, as any other
	// process's does. Marking it from the commit on would send those reads
	// to Postgres without filling (a SELECT per read of a hot key during
	// every write's delete) and buy no freshness.
	epoch := o.inv.TopologyEpoch()
	if replace != nil {
		if err := replace(ctx, key); err != nil {
			o.markPending(id, key)
			o.log.Debug("invalidation left to the sweeper", "key", key, "err", err)
			return
		}
	} else if errs := o.inv.DeleteFullEach(ctx, []string{key}); len(errs) > 0 && errs[0] != nil {
		o.markPending(id, key)
		o.log.Debug("invalidation left to the sweeper", "key", key, "err", errs[0])
		return
	}
	if !o.queueDone(id, epoch) {
		o.markPending(id, key)
		o.log.Debug("invalidation overlapped a topology change; left to the sweeper", "key", key)
		return
	}
}

// AnyPending reports whether any invalidation of this process has not
// reached the cache yet: one atomic load, for the read path to skip
// building the key it would pass to Pending.
func (o *Outbox) AnyPending() bool { return o.npend.Load() != 0 }

// SkipRedis reports whether a read of key (unprefixed, as the domain builds
// it) must bypass Redis because this process's own invalidation of it is
// pending (Redis may still hold the old value); the value for
// cachelayer.FetchOptions.SkipRedis. With nothing pending it is two atomic
// loads and builds no key.
//
// It is also true for every key until the process's namespace has settled
// (see namespace.go): a change made outside the library while it
// registered may not have recorded a row for it.
func (o *Outbox) SkipRedis(key string) bool {
	if !o.settled.Load() {
		return true
	}
	return o.AnyPending() && o.Pending(o.inv.FullKey(key))
}

// Pending reports whether an invalidation of key (full, prefixed) by this
// process has not reached the cache yet.
func (o *Outbox) Pending(key string) bool {
	if o.npend.Load() == 0 {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.byKey[key] > 0
}

func (o *Outbox) markPending(id int64, key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.pending[id]; ok {
		return
	}
	o.pending[id] = key
	o.byKey[key]++
	o.npend.Store(int64(len(o.pending)))
}

func (o *Outbox) clearPending(ids ...int64) {
	if len(ids) == 0 || o.npend.Load() == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, id := range ids {
		key, ok := o.pending[id]
		if !ok {
			continue
		}
		delete(o.pending, id)
		if o.byKey[key]--; o.byKey[key] <= 0 {
			delete(o.byKey, key)
		}
	}
	o.npend.Store(int64(len(o.pending)))
}

// pendingIDs returns the rows of this process's pending invalidations.
func (o *Outbox) pendingIDs() []int64 {
	if o.npend.Load() == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	ids := make([]int64, 0, len(o.pending))
	for id := range o.pending {
		ids = append(ids, id)
	}
	return ids
}

// Stats returns the domain's waiting depth and oldest waiting row age from
// the table and this process's counters.
func (o *Outbox) Stats(ctx context.Context) (Stats, error) {
	row, err := dbq.New(o.pool).CacheOutboxStats(ctx, o.cfg.Domain)
	if err != nil {
		return Stats{}, fmt.Errorf("outbox: stats: %w", err)
	}
	o.mu.Lock()
	pending := len(o.byKey)
	o.mu.Unlock()
	return Stats{
		Depth:     row.Depth,
		OldestAge: time.Duration(row.OldestAgeSeconds * float64(time.Second)),
		Pending:   pending,
		Swept:     o.swept.Load(),
		Dropped:   o.dropped.Load(),
		Cleaned:   o.cleaned.Load(),
		Redeleted: o.redeleted.Load(),
		Failures:  o.failures.Load(),

		Listening:     o.listening.Load(),
		Notifications: o.notifications.Load(),
		ListenDrops:   o.listenDrops.Load(),
		Settled:       o.settled.Load(),
	}, nil
}

// Close stops the sweeper and waits for a sweep in progress, then marks
// done the rows of invalidations that reached Redis. It is idempotent. Rows
// left waiting in the table are swept by any other instance.
func (o *Outbox) Close() error {
	o.closeOnce.Do(func() {
		if o.gauges != nil {
			_ = o.gauges.Unregister()
		}
		close(o.stop)
		o.wg.Wait()
		o.releaseNamespace()
	})
	o.wg.Wait()
	return nil
}
