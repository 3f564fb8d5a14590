package cachelayer

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Versioned is a value whose source counts its changes: CacheVersion grows
// by at least one with every committed change of the value, and a newer
// value always has a higher version (credits.Balance.Version does). The
// cache stores the version of such a value in its entry, which lets
// [Replace] tell an older cached copy from a newer one.
type Versioned interface {
	CacheVersion() int64
}

// Replace is the invalidation of key after a committed change whose new
// value is v: where Redis holds an older version of the value (a versioned
// entry with a lower CacheVersion), it stores v instead (for ttl, jittered),
// so the next read in any process is a hit of the new value rather than a
// miss and a load. Anything else is deleted exactly as [Cache.Delete] would
// — nothing (stays nothing: a late Replace never brings back a key that an
// invalidation emptied), a lease (voided, its waiters woken), a not-found
// marker, an unversioned value, garbage, and also a newer version (a row
// recreated with lower versions must not keep a stale copy; deleting is
// always safe). The same version is left as it is.
//
// Like Delete it is one round trip (a script instead of UNLINK), forgets the
// key's in-process flights, counts in Invalidations, and waits for
// InvalidateReplicas; it returns an error that Is [ErrUnavailable] or
// [ErrNotReplicated] when the key may still hold the old value.
//
// Why this is safe: versions of one row grow in commit order, so a value
// stored over an older one is never older than what a read could otherwise
// get; a Replace that arrives after a newer one finds the newer version (or
// an emptied key) and leaves it; a lease holder's fill fails because its
// lease is gone, as after a Delete.
func Replace[T Versioned](ctx context.Context, c *Cache, key string, v T, ttl time.Duration) error {
	if err := checkKey(key); err != nil {
		return err
	}
	return ReplaceFull(ctx, c, c.prefix+key, v, ttl)
}

// ReplaceFull is [Replace] of a full (prefixed) key, as the outbox names
// keys.
func ReplaceFull[T Versioned](ctx context.Context, c *Cache, fullKey string, v T, ttl time.Duration) error {
	if fullKey == "" || len(fullKey) > MaxKeyLen+len(c.prefix) {
		return fmt.Errorf("%w: full key %q", ErrInvalid, fullKey)
	}
	if err := checkTTL(ttl); err != nil {
		return err
	}
	b, err := encodeValue(c.codec, v)
	if err != nil || len(b) > c.cfg.MaxValueBytes {
		return c.DeleteFull(ctx, fullKey) // not cacheable: the invalidation is a delete
	}
	if c.noCache() {
		return c.DeleteFull(ctx, fullKey) // reaches no Redis: forgets the flights, reports why
	}
	r := &replacement{entry: string(b), version: v.CacheVersion(), px: c.jittered(ttl)}
	return joinDeleteErrors(c.deleteEach(ctx, []string{fullKey}, []*replacement{r}))
}

// replacement is what Replace stores in place of an older version.
type replacement struct {
	entry   string
	version int64
	px      int64
}

// cmd is the replace script for key, as EVAL: a few hundred bytes more
// than EVALSHA, but it cannot fail NOSCRIPT (Redis caches the compiled
// script by its hash either way).
func (r *replacement) cmd(ctx context.Context, c *Cache, key string) *redis.IntCmd {
	return redis.NewIntCmd(ctx, "eval", replaceSource, 1, key, r.entry, strconv.FormatInt(r.version, 10), r.px, c.notes.channel)
}

// replaceSource: KEYS[1] holds a versioned value (header 0x13, then the
// version as 8 big-endian bytes) older than ARGV[2] → SET ARGV[1] PX ARGV[3],
// return 1; the same version → return 1; anything else → DEL (and PUBLISH
// the key on ARGV[4] if it held a lease a waiter marked), return 0.
const replaceSource = `
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if ok and v and string.len(v) >= 9 and string.byte(v, 1) == 0x13 then
  local cur = struct.unpack('>i8', v, 2)
  local new = tonumber(ARGV[2])
  if cur == new then return 1 end
  if cur < new then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
    return 1
  end
end
redis.call('DEL', KEYS[1])
if ok and v and string.len(v) == 18 and string.sub(v, 1, 2) == '\0W' then
  pcall(redis.call, 'PUBLISH', ARGV[4], KEYS[1])
end
return 0
`
