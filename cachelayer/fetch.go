package cachelayer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fetch returns the value cached under key, or loads it with load, caches
// it for ttl (shortened by up to Config.Jitter) and returns it.
//
// A hit costs one Redis GET. On a miss, the callers of one key in one
// process share one flight: it re-checks Redis, takes a lease on the key,
// calls load once (detached from the callers' contexts, bounded by
// LoadTimeout), and fills the key with a compare-and-set that fails if the
// lease was voided by Delete meanwhile — then it loads once more before
// answering. A process that finds another's lease waits up to LeaseWait for
// its fill. Each caller waits on its own ctx: when ctx ends, Fetch returns
// ctx.Err() and the others still get the value.
//
// If Redis fails or the breaker is open, Fetch returns the loader's value
// (shared likewise) and no error. An error of load reaches the callers of
// its flight and is not cached, except one that Is [ErrNotFound]: that is
// cached as a not-found marker for NegativeTTL, and Fetch returns an error
// that Is ErrNotFound until the marker expires or the key is deleted. Key
// must be valid and ttl positive, or Fetch returns [ErrInvalid] without
// loading. A key must always be fetched with the same T.
func Fetch[T any](ctx context.Context, c *Cache, key string, ttl time.Duration,
	load func(context.Context) (T, error)) (T, error) {
	return FetchWith(ctx, c, key, FetchOptions{TTL: ttl}, load)
}

// FetchOptions tunes one [FetchWith] call.
type FetchOptions struct {
	TTL         time.Duration // how long a loaded value is cached (before jitter); must be positive
	NegativeTTL time.Duration // how long a not-found marker is cached; 0 means Config.NegativeTTL
}

// FetchWith is [Fetch] with per-call options, such as the not-found TTL of
// the caller's domain. A negative NegativeTTL is ErrInvalid.
func FetchWith[T any](ctx context.Context, c *Cache, key string, opts FetchOptions,
	load func(context.Context) (T, error)) (T, error) {
	var zero T
	ttl := opts.TTL
	if opts.NegativeTTL < 0 {
		return zero, fmt.Errorf("%w: negative NegativeTTL %v", ErrInvalid, opts.NegativeTTL)
	}
	negTTL := cmp.Or(opts.NegativeTTL, c.cfg.NegativeTTL)
	if err := checkKey(key); err != nil {
		return zero, err
	}
	if err := checkTTL(ttl); err != nil {
		return zero, err
	}
	full := c.prefix + key
	begin := c.seq.Add(1) // every answer must come from something started after this
	for attempt := 0; ; attempt++ {
		v, err, fresh := fetchOnce(ctx, c, key, full, ttl, negTTL, load, begin, attempt == 0)
		if fresh {
			return v, err
		}
		if attempt == maxFreshRetries {
			// Entries keep changing under us: a load of our own is fresh.
			c.st.loads.Add(1)
			return load(ctx)
		}
	}
}

// maxFreshRetries bounds how often a Fetch starts over because the flight it
// joined answered from before the Fetch began.
const maxFreshRetries = 2

// fetchOnce is one attempt of FetchWith. fresh is false when the flight it
// joined answered with a value read or loaded before begin (a flight that
// was already finishing when this caller's GET found the key empty): that
// value may predate an invalidation another process completed before this
// read began, so the caller starts over. count says whether this attempt
// counts in Hits and Misses (the first of a call does).
func fetchOnce[T any](ctx context.Context, c *Cache, key, full string, ttl, negTTL time.Duration,
	load func(context.Context) (T, error), begin int64, count bool) (_ T, _ error, fresh bool) {
	var zero T
	hit, miss := func() {
		if count {
			c.st.hits.Add(1)
		}
	}, func() {
		if count {
			c.st.misses.Add(1)
		}
	}
	redisFailed := false
	if !c.noCache() {
		if c.br.allow() {
			s, err := c.rounds.get(ctx, c, full)
			switch {
			case err == nil:
				var v T
				switch kind, _ := decodeEntry(c.codec, s, &v); kind {
				case entryValue:
					hit()
					return v, nil, true
				case entryNotFound:
					hit()
					return zero, &notFoundError{key: key}, true
				}
				miss() // a lease or an undecodable entry: the flight sorts it out
			case err == redis.Nil:
				miss()
			case errors.Is(err, ErrUnavailable):
				redisFailed = true
			case ctx.Err() != nil:
				return zero, ctx.Err(), true
			default: // an error reply such as WRONGTYPE: the flight heals the key
				miss()
			}
		} else {
			redisFailed = true // breaker open
		}
	}
	if err := ctx.Err(); err != nil {
		return zero, err, true
	}

	leader := false // set by our closure if it is the one that runs
	ch := c.group.DoChan(full, func() (any, error) {
		leader = true
		return runFlight(c, full, key, ttl, negTTL, load, redisFailed), nil
	})
	if c.hookJoined != nil {
		c.hookJoined(full)
	}
	select {
	case <-ctx.Done():
		return zero, ctx.Err(), true
	case r := <-ch:
		res, ok := r.Val.(*flightResult[T])
		if !ok { // a flight of the same key with another T: not ours to share
			c.st.loads.Add(1)
			v, err := load(ctx)
			return v, err, true
		}
		if res.src != 0 && res.src < begin && (res.err == nil || errors.Is(res.err, ErrNotFound)) {
			return zero, nil, false
		}
		if !leader && res.loaded {
			c.st.loadsShared.Add(1)
		}
		if redisFailed || res.fallback {
			c.st.fallbacks.Add(1)
		}
		return res.v, res.err, true
	}
}

// getOnce sends one GET of full, bounded by OpTimeout within ctx, and
// returns its result through outcome.
func (c *Cache) getOnce(ctx context.Context, full string) (string, error) {
	opCtx, cancel := c.opCtx(ctx)
	s, err := c.rdb.Get(opCtx, full).Result()
	cancel()
	return s, c.outcome(ctx, err)
}

// flightResult is what one flight hands to all its callers.
type flightResult[T any] struct {
	v        T
	err      error
	loaded   bool // the answer came from a load (not from Redis)
	fallback bool // the load ran because Redis failed or the breaker was open
	// src orders the answer's source against callers' beginnings (Cache.seq):
	// taken when the Redis read that found it, the fill that stored it, or
	// the load that produced it was started. 0 in degraded modes (fallback,
	// lease wait exhausted), where any caller takes the answer.
	src int64
}

// answerFromRedis makes an entry found in Redis the flight's answer,
// replacing the outcome of any earlier load of the flight (whose fill was
// rejected).
func (r *flightResult[T]) answerFromRedis(kind entryKind, v T, key string, src int64) {
	r.loaded, r.src = false, src
	if kind == entryNotFound {
		var zero T
		r.v, r.err = zero, &notFoundError{key: key}
		return
	}
	r.v, r.err = v, nil
}

// Limits of one flight's loop.
const (
	maxReloads     = 1 // loads after a rejected fill, before answering anyway
	maxFlightSteps = 8 // lease attempts (corrupt entries, vanished leases) before loading without Redis
)

// runFlight is the body of the one flight of full in this process. It runs
// detached from every caller, bounded by LoadTimeout.
func runFlight[T any](c *Cache, full, key string, ttl, negTTL time.Duration,
	load func(context.Context) (T, error), skipRedis bool) *flightResult[T] {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LoadTimeout)
	defer cancel()
	res := &flightResult[T]{}
	loadOnce := func() {
		c.st.loads.Add(1)
		res.loaded = true
		res.src = c.seq.Add(1)
		res.v, res.err = load(ctx)
	}
	degraded := func() { // a load that is not checked against the lease
		loadOnce()
		res.src = 0
	}
	fallback := func() *flightResult[T] {
		res.fallback = c.rdb != nil && !c.closed.Load()
		degraded()
		return res
	}

	if c.noCache() || skipRedis || !c.enter() {
		return fallback()
	}
	defer c.wg.Done()
	c.trackFlight(full, 1)
	defer c.trackFlight(full, -1)

	var (
		expect      *string   // an undecodable entry the next lease may replace
		leaseWaitTo time.Time // deadline of waiting for another's lease; zero: not waiting
		reloads     int
	)
	for range maxFlightSteps {
		if !c.br.allow() {
			return fallback()
		}
		token := newLeaseToken()
		sent := c.seq.Add(1)
		got, raw, err := c.acquire(ctx, full, token, expect)
		expect = nil
		if err != nil {
			return fallback() // failure counted by acquire
		}
		switch got {
		case leaseHealed:
			c.st.corrupt.Add(1)
			fallthrough
		case leaseTaken:
			loadOnce()
			if c.fill(ctx, full, token, ttl, negTTL, res.v, res.err, &res.src) || reloads >= maxReloads {
				return res
			}
			reloads++ // the value may predate an invalidation: load again
			continue
		}

		// The key holds something: use it, or wait for another's lease.
		var v T
		kind, _ := decodeEntry(c.codec, raw, &v)
		switch kind {
		case entryValue, entryNotFound:
			res.answerFromRedis(kind, v, key, sent)
			return res
		case entryCorrupt:
			c.st.corrupt.Add(1)
			expect = &raw
			continue
		}
		// entryLease: another process is loading.
		if leaseWaitTo.IsZero() {
			c.st.leaseWaits.Add(1)
			leaseWaitTo = time.Now().Add(c.cfg.LeaseWait)
			if c.hookLeaseWait != nil {
				c.hookLeaseWait(full)
			}
		}
		switch waitLease(c, ctx, full, key, leaseWaitTo, res) {
		case waitAnswered:
			return res
		case waitTimedOut:
			// Degraded: the holder did not fill in time; load without
			// filling (the value may be one load-duration old, see doc.go).
			degraded()
			return res
		}
	}
	degraded() // too many steps (entries changing under us): load without filling
	return res
}

// Outcomes of waitLease.
const (
	waitAnswered = iota // res holds the fill or a marker
	waitRecheck         // the lease is gone (or Redis failed): take the next step
	waitTimedOut        // LeaseWait (or the load's deadline) passed
)

// waitLease polls full with backoff until the lease there is replaced or
// deadline passes.
func waitLease[T any](c *Cache, ctx context.Context, full, key string, deadline time.Time, res *flightResult[T]) int {
	backoff := 5 * time.Millisecond
	for {
		wait := min(backoff, time.Until(deadline))
		if wait <= 0 {
			return waitTimedOut
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return waitTimedOut
		case <-t.C:
		}
		backoff = min(2*backoff, 50*time.Millisecond)

		if !c.br.allow() {
			return waitRecheck // the flight falls back
		}
		sent := c.seq.Add(1)
		opCtx, cancel := c.opCtx(ctx)
		s, err := c.rdb.Get(opCtx, full).Result()
		cancel()
		if err = c.outcome(ctx, err); err != nil {
			return waitRecheck // gone (redis.Nil), or failed: the next step decides
		}
		var v T
		switch kind, _ := decodeEntry(c.codec, s, &v); kind {
		case entryValue, entryNotFound:
			res.answerFromRedis(kind, v, key, sent)
			return waitAnswered
		case entryCorrupt:
			return waitRecheck
		}
	}
}

// Results of acquire.
const (
	leaseTaken  = iota // the key was empty (or held the expected entry); our lease is in it
	leaseHealed        // the key held another type (e.g. a hash); replaced by our lease
	leaseFound         // the key holds an entry, returned as raw
)

// acquireScript returns the key's string if it holds one (other than the
// expected undecodable entry ARGV[4], when ARGV[3] is "1"), else puts the
// lease ARGV[1] in it for ARGV[2] ms. A key of another type is replaced.
var acquireScript = redis.NewScript(`
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if not ok then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
if v and not (ARGV[3] == '1' and v == ARGV[4]) then
  return {2, v}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0}
`)

// acquire re-checks full and takes a lease on it unless it holds an entry.
// An error it returns Is ErrUnavailable (or is the context's).
func (c *Cache) acquire(ctx context.Context, full, token string, expect *string) (int, string, error) {
	mode, exp := "0", ""
	if expect != nil {
		mode, exp = "1", *expect
	}
	opCtx, cancel := c.opCtx(ctx)
	r, err := acquireScript.Run(opCtx, c.rdb, []string{full}, token, c.cfg.LeaseTTL.Milliseconds(), mode, exp).Slice()
	cancel()
	if err = c.outcome(ctx, err); err != nil {
		if !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: lease script: %w", ErrUnavailable, err)
		}
		return 0, "", err
	}
	if len(r) == 0 {
		return 0, "", fmt.Errorf("%w: lease script: empty reply", ErrUnavailable)
	}
	code, _ := r[0].(int64)
	switch code {
	case 0:
		return leaseTaken, "", nil
	case 1:
		return leaseHealed, "", nil
	}
	if len(r) < 2 {
		return 0, "", fmt.Errorf("%w: lease script: short reply", ErrUnavailable)
	}
	s, _ := r[1].(string)
	return leaseFound, s, nil
}

// fillScript replaces the lease ARGV[1] by the entry ARGV[2] for ARGV[3] ms,
// only while the lease is there; returns 1 if it did.
var fillScript = redis.NewScript(`
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if ok and v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
`)

// releaseScript deletes the key only while it holds the lease ARGV[1].
var releaseScript = redis.NewScript(`
local ok, v = pcall(redis.call, 'GET', KEYS[1])
if ok and v == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// fill stores the outcome of a load under the lease token. It reports false
// only when the fill was rejected because the lease was voided (counted in
// StaleFillsRejected): the caller should reload. Values that cannot or must
// not be cached release the lease instead; a Redis failure is counted and
// ignored (the loaded value is still the answer).
//
// When the fill succeeds, *src becomes the sequence number taken as it was
// sent: a caller that began before that is answered by a value no
// invalidation preceded (one would have voided the lease).
func (c *Cache) fill(ctx context.Context, full, token string, ttl, negTTL time.Duration, v any, loadErr error, src *int64) bool {
	var entry string
	var px int64
	switch {
	case loadErr != nil && errors.Is(loadErr, ErrNotFound):
		entry, px = notFoundEntry, c.jittered(negTTL)
	case loadErr != nil:
		c.release(ctx, full, token) // loader errors are never cached
		return true
	default:
		b, err := encodeValue(c.codec, v)
		if err != nil {
			c.log.Warn("cachelayer: value not cached: encode failed", "key", full, "err", err)
			c.release(ctx, full, token)
			return true
		}
		if len(b) > c.cfg.MaxValueBytes {
			c.st.oversize.Add(1)
			c.release(ctx, full, token)
			return true
		}
		entry, px = string(b), c.jittered(ttl)
	}
	if !c.br.allow() {
		return true // the lease expires by itself
	}
	opCtx, cancel := c.opCtx(ctx)
	sent := c.seq.Add(1)
	n, err := fillScript.Run(opCtx, c.rdb, []string{full}, token, entry, px).Int64()
	cancel()
	if err = c.outcome(ctx, err); err != nil {
		return true
	}
	if n == 1 {
		*src = sent
		if c.hookFilled != nil {
			c.hookFilled(full)
		}
		return true
	}
	c.st.staleFillsRejected.Add(1)
	return false
}

// release gives up a lease so others need not wait for it to expire.
func (c *Cache) release(ctx context.Context, full, token string) {
	if !c.br.allow() {
		return
	}
	opCtx, cancel := c.opCtx(ctx)
	err := releaseScript.Run(opCtx, c.rdb, []string{full}, token).Err()
	cancel()
	_ = c.outcome(ctx, err)
}

// trackFlight counts a running flight of full in or out, so that
// DeletePrefix can forget the flights of the keys it deletes.
func (c *Cache) trackFlight(full string, delta int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.flights[full] + delta; n > 0 {
		c.flights[full] = n
	} else {
		delete(c.flights, full)
	}
}
