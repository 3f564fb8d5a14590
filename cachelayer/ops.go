package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Get reads the value cached under key into dst (a pointer) and reports
// whether there was one. It never loads. It returns false and nil for a
// missing key (or one being loaded), false and an error that Is ErrNotFound
// for a cached not-found marker, and a decode error for an undecodable entry,
// which it leaves in place. In no-cache mode it returns false, nil; when
// Redis fails or the breaker is open, false and an error that Is
// ErrUnavailable.
func (c *Cache) Get(ctx context.Context, key string, dst any) (found bool, err error) {
	if err := checkKey(key); err != nil {
		return false, err
	}
	if c.noCache() {
		return false, nil
	}
	if !c.breakerFor(c.prefix + key).allow() {
		return false, errBreakerOpen
	}
	s, err := c.getOnce(ctx, c.prefix+key)
	switch {
	case err == redis.Nil:
		c.st.misses.Add(1)
		return false, nil
	case err != nil:
		return false, fmt.Errorf("cachelayer: get %s: %w", key, err)
	}
	kind, derr := decodeEntry(c.codec, s, dst)
	switch kind {
	case entryValue:
		c.st.hits.Add(1)
		return true, nil
	case entryNotFound:
		c.st.hits.Add(1)
		return false, &notFoundError{key: key}
	case entryLease:
		c.st.misses.Add(1)
		return false, nil
	}
	c.st.misses.Add(1)
	return false, fmt.Errorf("cachelayer: get %s: %w", key, derr)
}

// Set caches v under key for exactly ttl (no jitter), replacing whatever is
// there; a lease there is voided, so a fill of a load that began before Set
// is rejected. Values whose encoding exceeds MaxValueBytes are refused with
// ErrInvalid (and counted in Oversize). In no-cache mode, when Redis fails or
// the breaker is open, Set returns an error that Is ErrUnavailable.
func (c *Cache) Set(ctx context.Context, key string, v any, ttl time.Duration) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := checkTTL(ttl); err != nil {
		return err
	}
	b, err := encodeValue(c.codec, v)
	if err != nil {
		return fmt.Errorf("cachelayer: set %s: encode: %w", key, err)
	}
	if len(b) > c.cfg.MaxValueBytes {
		c.st.oversize.Add(1)
		return fmt.Errorf("%w: value of %d bytes exceeds MaxValueBytes %d", ErrInvalid, len(b), c.cfg.MaxValueBytes)
	}
	full := c.prefix + key
	if !c.useRedisFor(full) {
		return c.unavailableErr()
	}
	opCtx, cancel := c.opCtx(ctx)
	err = c.rdb.Set(opCtx, full, b, ttl).Err()
	cancel()
	c.forget([]string{full})
	if err = c.outcomeFor(ctx, full, err); err != nil {
		return fmt.Errorf("cachelayer: set %s: %w", key, err)
	}
	c.nearSettle(ctx, []string{full}, nil)
	return nil
}

// Delete removes keys from the cache, one UNLINK per key (pipelined, one
// round trip per master; safe on Redis Cluster), bounded by
// InvalidateTimeout, and waits for a replica's confirmation where the master
// has replicas (see [Cache.DeleteFullEach]). It voids leases on them, so
// fills of loads that began before it are rejected, and makes later Fetch
// calls in this process start new flights. In no-cache mode it returns nil.
// When Redis fails or a key's breaker is open (that key's master is then not
// attempted) it returns an error that Is ErrUnavailable; when a replica did
// not confirm in time, one that Is ErrNotReplicated. The caller should retry
// (see the outbox of the cached repositories).
func (c *Cache) Delete(ctx context.Context, keys ...string) error {
	full := make([]string, len(keys))
	for i, k := range keys {
		if err := checkKey(k); err != nil {
			return err
		}
		full[i] = c.prefix + k
	}
	return c.deleteFull(ctx, full)
}

// DeleteFull is Delete for keys already prefixed (as [Cache.FullKey]
// returns them), possibly by caches with another Prefix: an outbox sweeper
// deletes keys that other instances wrote. Unlike Delete, it returns nil
// only when every key's UNLINK reached Redis (and was confirmed by a
// replica where its master has one): in no-cache mode and after Close it
// returns an error that Is ErrUnavailable, so that a caller keeping a
// durable record of the invalidation (an outbox row) never counts it done.
// It is [Cache.DeleteFullEach] with the keys' errors joined.
func (c *Cache) DeleteFull(ctx context.Context, fullKeys ...string) error {
	for _, k := range fullKeys {
		if k == "" || len(k) > MaxKeyLen+len(c.prefix) {
			return fmt.Errorf("%w: full key %q", ErrInvalid, k)
		}
	}
	return joinDeleteErrors(c.DeleteFullEach(ctx, fullKeys))
}

// Enabled reports whether the cache has a Redis client and is not closed:
// false in no-cache mode and after Close. Unlike [Cache.Available] it
// ignores the breaker, which closes again by itself.
func (c *Cache) Enabled() bool { return !c.noCache() }

// deleteFull is Delete's engine: nil in no-cache mode.
func (c *Cache) deleteFull(ctx context.Context, full []string) error {
	if len(full) == 0 {
		return nil
	}
	if c.noCache() {
		c.forget(full)
		return nil
	}
	return joinDeleteErrors(c.deleteEach(ctx, full, nil))
}

// forget makes the in-process flights of full keys unjoinable and drops
// their near copies. Deletes call it before and after their command.
func (c *Cache) forget(full []string) {
	n := c.near.Load()
	for _, k := range full {
		c.group.Forget(k)
		if n != nil {
			n.drop(k)
		}
	}
}

// deletePrefixBatch is the SCAN COUNT and the number of UNLINKs pipelined
// per round trip.
const deletePrefixBatch = 1000

// DeletePrefix deletes every key that starts with prefix (under this
// cache's Prefix) and returns how many it deleted. The glob characters
// `\ * ? [ ]` in prefix are matched literally. It SCANs every master of a
// Cluster (every shard of a Ring) — never KEYS — and UNLINKs each key found
// (pipelined in batches, one key per command, so no multi-slot command), each
// round trip bounded by InvalidateTimeout. Leases on those keys are voided
// and their in-process flights forgotten. prefix must not be empty
// (ErrInvalid). In no-cache mode it returns 0, nil; when Redis fails or the
// breaker is open, the count so far and an error that Is ErrUnavailable.
func (c *Cache) DeletePrefix(ctx context.Context, prefix string) (int64, error) {
	if prefix == "" {
		return 0, fmt.Errorf("%w: empty prefix (would delete the whole namespace)", ErrInvalid)
	}
	if len(prefix) > MaxKeyLen {
		return 0, fmt.Errorf("%w: prefix of %d bytes exceeds %d", ErrInvalid, len(prefix), MaxKeyLen)
	}
	return c.DeleteFullPrefix(ctx, c.prefix+prefix)
}

// DeleteFullPrefix is [Cache.DeletePrefix] for a full (already prefixed)
// key prefix, as an outbox row names it: any namespace's, not only this
// Cache's. It must be longer than this Cache's own prefix when it starts
// with it, so that it never empties the whole namespace (ErrInvalid).
func (c *Cache) DeleteFullPrefix(ctx context.Context, full string) (int64, error) {
	if full == "" || full == c.prefix {
		return 0, fmt.Errorf("%w: empty prefix (would delete the whole namespace)", ErrInvalid)
	}
	if len(full) > len(c.prefix)+MaxKeyLen {
		return 0, fmt.Errorf("%w: prefix of %d bytes exceeds %d", ErrInvalid, len(full), len(c.prefix)+MaxKeyLen)
	}
	if c.noCache() {
		return 0, nil
	}
	// Know how to reach every master before taking the breaker's say (and
	// perhaps its half-open probe, which must then report an outcome).
	var each func(ctx context.Context, fn func(context.Context, *redis.Client) error) error
	switch r := c.rdb.(type) {
	case *redis.ClusterClient:
		each = r.ForEachMaster
	case *redis.Ring:
		each = r.ForEachShard
	case *redis.Client:
		each = func(ctx context.Context, fn func(context.Context, *redis.Client) error) error { return fn(ctx, r) }
	default:
		return 0, fmt.Errorf("%w: DeletePrefix does not support %T (it needs a *redis.Client, *redis.ClusterClient or *redis.Ring to SCAN every master)", ErrInvalid, c.rdb)
	}
	// One breaker for the call, except on a Cluster whose slot table is
	// known, where each master's own breaker guards its SCAN (a master
	// whose breaker is open is skipped, and the call reports it).
	perMaster := false
	if cc, ok := c.rdb.(*redis.ClusterClient); ok && c.shards != nil && c.shards.ready.Load() {
		perMaster = true
		each = func(ctx context.Context, fn func(context.Context, *redis.Client) error) error {
			var mu sync.Mutex
			var errs []error
			err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
				b := c.shards.forAddr(node.Options().Addr)
				var err error
				if !b.allow() {
					err = fmt.Errorf("master %s: %w", node.Options().Addr, errBreakerOpen)
				} else if err = c.outcomeOn(ctx, b, fn(ctx, node)); err != nil {
					err = fmt.Errorf("master %s: %w", node.Options().Addr, asUnavailable(err))
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				return c.outcome(ctx, err)
			}
			return errors.Join(errs...)
		}
	} else if !c.br.allow() {
		return 0, fmt.Errorf("cachelayer: delete prefix: %w", errBreakerOpen)
	}
	pattern := escapeGlob(full) + "*"
	var deleted atomic.Int64
	scan := func(ctx context.Context, node *redis.Client) error {
		var cursor uint64
		for {
			sctx, cancel := context.WithTimeout(ctx, c.cfg.InvalidateTimeout)
			keys, next, err := node.Scan(sctx, cursor, pattern, deletePrefixBatch).Result()
			if err == nil && len(keys) > 0 {
				var cmds []redis.Cmder
				cmds, err = node.Pipelined(sctx, func(p redis.Pipeliner) error {
					for _, k := range keys {
						p.Unlink(sctx, k)
					}
					return nil
				})
				for _, cmd := range cmds {
					if n, cerr := cmd.(*redis.IntCmd).Result(); cerr == nil {
						deleted.Add(n)
					}
				}
			}
			cancel()
			if err != nil {
				return err
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	err := each(ctx, scan)
	c.forgetPrefix(full)
	if n := c.near.Load(); n != nil && deleted.Load() > 0 && n.overlaps(full) {
		n.settle(ctx) // as after any change of near keys
	}
	if !perMaster {
		err = c.outcome(ctx, err)
	}
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return deleted.Load(), fmt.Errorf("cachelayer: delete prefix: %w", err)
	}
	return deleted.Load(), nil
}

// forgetPrefix makes the running flights of keys under full unjoinable.
func (c *Cache) forgetPrefix(full string) {
	c.mu.Lock()
	var keys []string
	for k := range c.flights {
		if strings.HasPrefix(k, full) {
			keys = append(keys, k)
		}
	}
	c.mu.Unlock()
	c.forget(keys)
	if n := c.near.Load(); n != nil {
		n.prefixFlush(full)
	}
}

// MatchPrefix returns the SCAN MATCH pattern of the keys that start with
// prefix, taken literally: the glob characters \ * ? [ ] in it are escaped,
// as DeletePrefix escapes them. prefix is a full Redis key prefix (FullKey
// of an unprefixed one).
func MatchPrefix(prefix string) string { return escapeGlob(prefix) + "*" }

// escapeGlob escapes the characters SCAN MATCH treats as a glob.
func escapeGlob(s string) string {
	if !strings.ContainsAny(s, `\*?[]`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\', '*', '?', '[', ']':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Exists reports whether key holds a value (or a counter of Incr/Allow); a
// not-found marker or a lease is not one. In no-cache mode it returns false,
// nil; when Redis fails or the breaker is open, false and an error that Is
// ErrUnavailable.
func (c *Cache) Exists(ctx context.Context, key string) (bool, error) {
	if err := checkKey(key); err != nil {
		return false, err
	}
	if c.noCache() {
		return false, nil
	}
	full := c.prefix + key
	if !c.breakerFor(full).allow() {
		return false, errBreakerOpen
	}
	opCtx, cancel := c.opCtx(ctx)
	head, err := c.rdb.GetRange(opCtx, full, 0, 0).Result()
	cancel()
	if err = c.outcomeFor(ctx, full, err); err != nil {
		if redis.HasErrorPrefix(err, "WRONGTYPE") {
			return true, nil // a key of another type exists
		}
		return false, fmt.Errorf("cachelayer: exists %s: %w", key, err)
	}
	return head != "" && head[0] != leaseMagic && head[0] != headerNotFound, nil
}

// ttlScript returns the PTTL of a key unless it holds a lease or a
// not-found marker (then -2, as for a missing key).
var ttlScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return -2 end
if t == 'string' then
  local h = redis.call('GETRANGE', KEYS[1], 0, 0)
  if h == '\0' or h == ARGV[1] then return -2 end
end
return redis.call('PTTL', KEYS[1])
`)

// TTL returns how long key has left to live, or [NoExpiry]. For a missing
// key, a lease or a not-found marker it returns an error that Is
// ErrNotFound. In no-cache mode, when Redis fails or the breaker is open, it
// returns an error that Is ErrUnavailable.
func (c *Cache) TTL(ctx context.Context, key string) (time.Duration, error) {
	if err := checkKey(key); err != nil {
		return 0, err
	}
	full := c.prefix + key
	if !c.useRedisFor(full) {
		return 0, c.unavailableErr()
	}
	opCtx, cancel := c.opCtx(ctx)
	ms, err := ttlScript.Run(opCtx, c.rdb, []string{full}, notFoundEntry).Int64()
	cancel()
	if err = c.outcomeFor(ctx, full, err); err != nil {
		return 0, fmt.Errorf("cachelayer: ttl %s: %w", key, err)
	}
	switch {
	case ms == -2:
		return 0, fmt.Errorf("cachelayer: ttl %s: %w", key, ErrNotFound)
	case ms < 0:
		return NoExpiry, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// incrScript adds ARGV[1] to the counter and gives it a TTL of ARGV[2] ms
// if it has none (it was just created), in one atomic step.
var incrScript = redis.NewScript(`
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
`)

// Incr adds by (negative to decrement) to the integer counter under key and
// returns the new value. A counter created by Incr expires ttl after its
// creation (later calls do not extend it), so it can never live forever; ttl
// must be positive. Counters are plain Redis integers: use keys that Fetch
// never reads (e.g. "rate:…"). In no-cache mode, when Redis fails or the
// breaker is open, Incr returns an error that Is ErrUnavailable.
func (c *Cache) Incr(ctx context.Context, key string, by int64, ttl time.Duration) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, err
	}
	if err := checkTTL(ttl); err != nil {
		return 0, err
	}
	full := c.prefix + key
	if !c.useRedisFor(full) {
		return 0, c.unavailableErr()
	}
	opCtx, cancel := c.opCtx(ctx)
	n, err := incrScript.Run(opCtx, c.rdb, []string{full}, by, max(ttl.Milliseconds(), 1)).Int64()
	cancel()
	if err = c.outcomeFor(ctx, full, err); err != nil {
		return 0, fmt.Errorf("cachelayer: incr %s: %w", key, err)
	}
	return n, nil
}

// allowScript counts one call in the current window of the counter, starting
// the window (its TTL) on the first call, in one atomic step.
var allowScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
`)

// Allow is a fixed-window rate limiter: it counts a call under key and
// reports whether it is among the first limit calls of the current window,
// which starts with the first call and lasts window. Counting and starting
// the window are one atomic step, so concurrent callers never exceed limit.
// It fails open: in no-cache mode, when Redis fails or the breaker is open it
// returns true and an error that Is ErrUnavailable (the caller decides).
// limit and window must be positive (else false, ErrInvalid).
func (c *Cache) Allow(ctx context.Context, key string, limit int64, window time.Duration) (bool, error) {
	if err := checkKey(key); err != nil {
		return false, err
	}
	if limit <= 0 {
		return false, fmt.Errorf("%w: limit %d must be positive", ErrInvalid, limit)
	}
	if err := checkTTL(window); err != nil {
		return false, err
	}
	full := c.prefix + key
	if !c.useRedisFor(full) {
		return true, c.unavailableErr()
	}
	opCtx, cancel := c.opCtx(ctx)
	n, err := allowScript.Run(opCtx, c.rdb, []string{full}, max(window.Milliseconds(), 1)).Int64()
	cancel()
	if err = c.outcomeFor(ctx, full, err); err != nil {
		if errors.Is(err, ErrUnavailable) {
			return true, fmt.Errorf("cachelayer: allow %s: %w", key, err)
		}
		return false, fmt.Errorf("cachelayer: allow %s: %w", key, err)
	}
	return n <= limit, nil
}
