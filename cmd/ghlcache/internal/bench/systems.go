package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	gocache "github.com/go-redis/cache/v9"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
)

// Key names one balance.
type Key struct {
	UserID int64
	Type   credits.Type
}

// A System reads and changes balances one way: straight from Postgres, or
// through one of the caches the bench compares. Each value is one instance
// (a process's worth: its own Redis client and in-process state).
type System interface {
	// Balance reads a balance through the system's read path.
	Balance(ctx context.Context, k Key) (credits.Balance, error)
	// Add adds amount through the system's write path, which invalidates
	// the cached balance as the system does it.
	Add(ctx context.Context, k Key, amount int64) (credits.Balance, error)
	// Quiesce finishes invalidations the system left for later (ghlcache's
	// outbox); the others have none.
	Quiesce(ctx context.Context) error
	Close() error
}

// Kind names a system.
type Kind string

// The systems of the comparison.
const (
	KindPostgres     Kind = "postgres"               // no cache: every read is a SELECT
	KindNaive        Kind = "naive"                  // cache-aside as the TypeScript original did it
	KindGoRedisCache Kind = "go-redis/cache"         // github.com/go-redis/cache/v9 Once, Redis only
	KindGoRedisTiny  Kind = "go-redis/cache+tinylfu" // the same with its local TinyLFU
	KindGhlcache     Kind = "ghlcache"               // credits.Cached on cachelayer
	KindGhlcacheWT   Kind = "ghlcache+write-through" // the same with CachedConfig.WriteThrough (opt-in)
	KindGhlcacheNear Kind = "ghlcache+near"          // the same with CachedConfig.NearCache: the near tier (opt-in for balances)
	balanceTTL            = 10 * time.Minute         // every cache, for balances: longer than a run, so warm keys stay warm
	tinyLFUSize           = 100_000                  // entries of go-redis/cache's local cache
)

// Kinds lists the systems in the order the bench runs and reports them.
var Kinds = []Kind{KindPostgres, KindNaive, KindGoRedisCache, KindGoRedisTiny, KindGhlcache, KindGhlcacheWT, KindGhlcacheNear}

// IsGhlcache reports whether the system is ghlcache, in any configuration.
func (k Kind) IsGhlcache() bool {
	return k == KindGhlcache || k == KindGhlcacheWT || k == KindGhlcacheNear
}

// Cached reports whether the system has a cache.
func (k Kind) Cached() bool { return k != KindPostgres }

// SystemEnv is what systems are built on.
type SystemEnv struct {
	Pool         *pgxpool.Pool
	RedisOptions *redis.Options // each instance gets a client of its own
	Prefix       string         // full Redis key prefix of this system, e.g. "ghl:bench:naive:"
	Logger       *slog.Logger   // for ghlcache; nil: discard
	RedisCounter *RedisCounter  // added to the instance's Redis client when set
}

// NewSystem returns a new instance of kind on env.
func NewSystem(kind Kind, env SystemEnv) (System, error) {
	store := credits.NewStore(env.Pool)
	if kind == KindPostgres {
		return &postgresSystem{store: store}, nil
	}
	rdb := redis.NewClient(env.RedisOptions)
	if env.RedisCounter != nil {
		rdb.AddHook(env.RedisCounter)
	}
	switch kind {
	case KindNaive:
		return &naiveSystem{store: store, rdb: rdb, prefix: env.Prefix}, nil
	case KindGoRedisCache, KindGoRedisTiny:
		opts := &gocache.Options{Redis: rdb, StatsEnabled: true}
		if kind == KindGoRedisTiny {
			opts.LocalCache = gocache.NewTinyLFU(tinyLFUSize, balanceTTL)
		}
		return &goRedisCacheSystem{store: store, rdb: rdb, c: gocache.New(opts), prefix: env.Prefix}, nil
	case KindGhlcache, KindGhlcacheWT, KindGhlcacheNear:
		logger := env.Logger
		if logger == nil {
			logger = slog.New(slog.DiscardHandler)
		}
		cache := cachelayer.New(rdb, &cachelayer.Config{Prefix: env.Prefix, Logger: logger})
		return &ghlcacheSystem{
			rdb: rdb, cache: cache,
			repo: credits.NewCached(store, cache, &credits.CachedConfig{TTL: balanceTTL, Logger: logger,
				WriteThrough: kind == KindGhlcacheWT, NearCache: kind == KindGhlcacheNear}),
		}, nil
	}
	_ = rdb.Close()
	return nil, fmt.Errorf("bench: unknown system %q", kind)
}

func addChange(k Key, amount int64) credits.Change {
	return credits.Change{UserID: k.UserID, Type: k.Type, Amount: amount, Reason: "bench"}
}

// postgresSystem reads every balance from Postgres.
type postgresSystem struct{ store *credits.Store }

func (s *postgresSystem) Balance(ctx context.Context, k Key) (credits.Balance, error) {
	return s.store.Balance(ctx, k.UserID, k.Type)
}
func (s *postgresSystem) Add(ctx context.Context, k Key, amount int64) (credits.Balance, error) {
	return s.store.Add(ctx, addChange(k, amount))
}
func (s *postgresSystem) Quiesce(context.Context) error { return nil }
func (s *postgresSystem) Close() error                  { return nil }

// naiveSystem is cache-aside as the TypeScript service did it: GET; on a
// miss SELECT, then SET with a TTL; after a write, DEL. No singleflight, no
// lease: concurrent misses all load, and a fill may land after a write's
// delete.
type naiveSystem struct {
	store        *credits.Store
	rdb          *redis.Client
	prefix       string
	hits, misses atomic.Int64
}

func (s *naiveSystem) HitsMisses() (hits, misses int64) { return s.hits.Load(), s.misses.Load() }

func (s *naiveSystem) key(k Key) string { return s.prefix + credits.Key(k.UserID, k.Type) }

func (s *naiveSystem) Balance(ctx context.Context, k Key) (credits.Balance, error) {
	key := s.key(k)
	raw, err := s.rdb.Get(ctx, key).Bytes()
	if err == nil {
		var b credits.Balance
		if err := json.Unmarshal(raw, &b); err == nil {
			s.hits.Add(1)
			return b, nil
		}
	}
	s.misses.Add(1)
	b, err := s.store.Balance(ctx, k.UserID, k.Type)
	if err != nil {
		return b, err
	}
	if raw, err := json.Marshal(b); err == nil {
		_ = s.rdb.Set(ctx, key, raw, balanceTTL).Err() // the original ignored cache errors too
	}
	return b, nil
}

func (s *naiveSystem) Add(ctx context.Context, k Key, amount int64) (credits.Balance, error) {
	b, err := s.store.Add(ctx, addChange(k, amount))
	if err != nil {
		return b, err
	}
	_ = s.rdb.Del(ctx, s.key(k)).Err()
	return b, nil
}
func (s *naiveSystem) Quiesce(context.Context) error { return nil }
func (s *naiveSystem) Close() error                  { return s.rdb.Close() }

// goRedisCacheSystem uses github.com/go-redis/cache/v9: Once is read-through
// with singleflight (per process), msgpack encoding; Delete removes the key
// from Redis and from this instance's local cache.
type goRedisCacheSystem struct {
	store  *credits.Store
	rdb    *redis.Client
	c      *gocache.Cache
	prefix string
}

func (s *goRedisCacheSystem) Balance(ctx context.Context, k Key) (credits.Balance, error) {
	var b credits.Balance
	err := s.c.Once(&gocache.Item{
		Ctx: ctx, Key: s.prefix + credits.Key(k.UserID, k.Type), Value: &b, TTL: balanceTTL,
		Do: func(item *gocache.Item) (any, error) {
			return s.store.Balance(item.Context(), k.UserID, k.Type)
		},
	})
	return b, err
}

func (s *goRedisCacheSystem) Add(ctx context.Context, k Key, amount int64) (credits.Balance, error) {
	b, err := s.store.Add(ctx, addChange(k, amount))
	if err != nil {
		return b, err
	}
	if err := s.c.Delete(ctx, s.prefix+credits.Key(k.UserID, k.Type)); err != nil && !errors.Is(err, gocache.ErrCacheMiss) {
		return b, nil // as the library's users do: the write stands
	}
	return b, nil
}
func (s *goRedisCacheSystem) Quiesce(context.Context) error { return nil }

func (s *goRedisCacheSystem) HitsMisses() (hits, misses int64) {
	st := s.c.Stats()
	return int64(st.Hits), int64(st.Misses)
}
func (s *goRedisCacheSystem) Close() error { return s.rdb.Close() }

// ghlcacheSystem is the library under test: credits.Cached on cachelayer.
type ghlcacheSystem struct {
	rdb   *redis.Client
	cache *cachelayer.Cache
	repo  *credits.Cached
}

func (s *ghlcacheSystem) Balance(ctx context.Context, k Key) (credits.Balance, error) {
	return s.repo.Balance(ctx, k.UserID, k.Type)
}
func (s *ghlcacheSystem) Add(ctx context.Context, k Key, amount int64) (credits.Balance, error) {
	return s.repo.Add(ctx, addChange(k, amount))
}

// Quiesce sweeps the outbox until it is empty (bounded by ctx): every
// invalidation has then reached Redis.
func (s *ghlcacheSystem) Quiesce(ctx context.Context) error {
	d := Drainer{Poll: 10 * time.Millisecond, Outboxes: []Outbox{{
		Sweep: s.repo.Sweep,
		Depth: func(ctx context.Context) (int64, error) { st, err := s.repo.OutboxStats(ctx); return st.Depth, err },
	}}}
	_, err := d.Drain(ctx)
	return err
}

func (s *ghlcacheSystem) HitsMisses() (hits, misses int64) {
	st := s.cache.Stats()
	return st.Hits + st.NearHits, st.Misses // a near hit counts in NearHits only
}

// Stats returns the cache's counters.
func (s *ghlcacheSystem) Stats() cachelayer.Stats { return s.cache.Stats() }

func (s *ghlcacheSystem) Close() error {
	return errors.Join(s.repo.Close(), s.cache.Close(), s.rdb.Close())
}

// Floor is the raw floor of any Redis-backed hit: a go-redis GET of a
// balance's JSON (the same bytes ghlcache stores, without its one-byte
// header) and a json.Unmarshal, nothing else.
type Floor struct {
	rdb    *redis.Client
	prefix string
}

// NewFloor returns a Floor on a client of its own.
func NewFloor(opts *redis.Options, prefix string) *Floor {
	return &Floor{rdb: redis.NewClient(opts), prefix: prefix}
}

// Fill writes the JSON of each balance under the floor's prefix.
func (f *Floor) Fill(ctx context.Context, bs []credits.Balance) error {
	pipe := f.rdb.Pipeline()
	for _, b := range bs {
		raw, err := json.Marshal(b)
		if err != nil {
			return err
		}
		pipe.Set(ctx, f.prefix+credits.Key(b.UserID, b.Type), raw, time.Hour)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Balance is one raw GET and decode.
func (f *Floor) Balance(ctx context.Context, k Key) (credits.Balance, error) {
	var b credits.Balance
	raw, err := f.rdb.Get(ctx, f.prefix+credits.Key(k.UserID, k.Type)).Bytes()
	if err != nil {
		return b, err
	}
	err = json.Unmarshal(raw, &b)
	return b, err
}

// Close closes the floor's client.
func (f *Floor) Close() error { return f.rdb.Close() }
