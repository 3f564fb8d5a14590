package cachelayer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"
)

// Fetch returns the value cached under key, or loads it with load, caches
// it for ttl (shortened by up to Config.Jitter) and returns it.
//
// A hit costs one Redis command, SET key <lease> NX GET, which returns the
// entry and stores nothing. When it finds the key empty it has put this
// caller's lease in it: the caller's flight (which the process's other
// callers of the key join) calls load once (detached from the callers'
// contexts, bounded by LoadTimeout) and fills the key with a compare-and-set
// that fails if the lease was voided by Delete meanwhile — then it loads
// once more before answering. A process that finds another's lease waits up
// to LeaseWait for its fill, woken by a notification of the fill. Each
// caller waits on its own ctx: when ctx ends, Fetch returns ctx.Err() and
// the others still get the value.
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
	// SkipRedis serves the call from its loader without reading or filling
	// Redis, for a key whose invalidation has not reached Redis yet (Redis
	// may still hold the old value). Concurrent SkipRedis calls of a key in
	// this process still share one load, and a call never takes the answer
	// of a load that began before it did.
	SkipRedis bool
	// NoNear reads this call through Redis even if its key is under the
	// near tier (and stores no near copy); SkipRedis implies it.
	NoNear bool
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
	var near *nearTier
	if n := c.near.Load(); n != nil && !opts.SkipRedis && !opts.NoNear && n.covers(key) {
		if v, ok, err := nearGet[T](n, key, true); ok {
			if c.tel != nil {
				c.nearHit(key)
			}
			return v, err
		}
		near = n
	}
	var obs fetchObs
	var ob *fetchObs // nil without telemetry
	if c.tel != nil {
		obs.t0 = time.Now()
		ob = &obs
	}
	full := c.prefix + key
	begin := c.seq.Add(1) // every answer must come from something started after this
	skip := opts.SkipRedis
	if skip {
		c.st.bypasses.Add(1)
	}
	for attempt := 0; ; attempt++ {
		v, next, err := fetchOnce(ctx, c, key, full, ttl, negTTL, load, begin, attempt == 0, skip, near, ob)
		switch next {
		case answered:
			if ob != nil {
				c.fetched(key, ob, err)
			}
			return v, err
		case retryWithoutRedis:
			skip = true
		}
		if attempt == maxFreshRetries {
			// Entries keep changing under us: a load of our own is fresh.
			c.st.loads.Add(1)
			v, err := safeLoad(ctx, c, full, load)
			if ob != nil {
				c.fetched(key, ob, err)
			}
			return v, err
		}
	}
}

// maxFreshRetries bounds how often a Fetch starts over because the flight it
// joined answered from before the Fetch began. One is enough in practice: a
// flight started after the rejected one ended began after the caller did.
const maxFreshRetries = 2

// What fetchOnce tells FetchWith to do next.
const (
	answered          = iota // return the answer
	retry                    // the answer predates the call: start over
	retryWithoutRedis        // likewise, and the flight had to give up on Redis: load without it
)

// fetchOnce is one attempt of FetchWith. It asks for a retry when the
// flight it joined answered with a value read or loaded before begin (a
// flight that was already running when this caller's read found the key
// held by a lease): that value may predate an invalidation another process
// completed before this read began, so the caller starts over — unless its
// own Redis read failed, when any answer of its flight will do (degraded
// mode). count says whether this attempt counts in Hits and Misses (the
// first of a call does). skip serves the call without Redis
// (FetchOptions.SkipRedis, or a retry after a flight that could not use
// Redis's lease).
//
// The read is one command, SET key <lease> NX GET PX LeaseTTL: it returns a
// value or marker (a hit), another lease (someone is loading: join or start
// the flight that waits for it), or nil — the key was empty and now holds
// this caller's lease, so the caller leads a new flight that loads at once
// and fills under that lease. A miss is therefore this read, the load and
// the fill; a hit is the read alone.
func fetchOnce[T any](ctx context.Context, c *Cache, key, full string, ttl, negTTL time.Duration,
	load func(context.Context) (T, error), begin int64, count bool, skip bool, near *nearTier, ob *fetchObs) (_ T, next int, _ error) {
	var zero T
	if skip {
		start := flightStart{mode: flightBypass}
		if ob != nil {
			ob.decide(outBypass)
			ctx = c.startSpan(ctx, ob, key)
			start.span = ob.span
		}
		return joinFlight(ctx, c, full, key, ttl, negTTL, load, begin, start, ob)
	}
	start := flightStart{mode: flightNormal}
	if !c.noCache() {
		if br := c.breakerFor(full); br.allow() {
			token := c.tokens.next()
			var snap nearSnap
			if near != nil {
				snap = near.snapshot(key) // before the read is sent (see nearTier)
			}
			sent := time.Now()
			var s string
			var err error
			pttl := time.Duration(-3) // not read
			if snap.ok {
				s, pttl, err = c.readOrLeaseTTL(ctx, full, token, br)
			} else {
				s, err = c.readOrLease(ctx, full, token, br)
			}
			if err != nil && err != redis.Nil && mayHaveTakenEffect(err) && !errors.Is(err, errNotSent) {
				// The reply was lost (timeout, cancellation, a dropped
				// connection): the SET may have put our lease in an empty
				// key, and no flight of ours will fill or release it. Left
				// there, it would make every process wait LeaseWait for a
				// fill that never comes, and keep the key uncached for
				// LeaseTTL.
				c.releaseOrphan(full, token)
			}
			switch {
			case err == nil:
				var v T
				kind, _ := decodeEntry(c.codec, s, &v)
				if kind == entryValue || kind == entryNotFound {
					if count {
						c.st.hits.Add(1)
					}
					if ob != nil {
						if kind == entryNotFound {
							ob.decide(outNotFound)
						} else {
							ob.decide(outHit)
						}
					}
					if snap.ok {
						_, payload := classify(s)
						ttlFor := ttl
						if kind == entryNotFound {
							ttlFor = negTTL
						}
						nearStore(near, key, snap, kind, v, payload, pttl, ttlFor)
					}
					if kind == entryNotFound {
						return zero, answered, &notFoundError{key: key}
					}
					return v, answered, nil
				}
				start.found = s // a lease or an undecodable entry: the flight sorts it out
			case err == redis.Nil: // the key was empty: our lease is in it
				start.lease, start.leaseSent = token, sent
			case errors.Is(err, ErrUnavailable):
				start.mode = flightFallback
			case ctx.Err() != nil:
				return zero, answered, ctx.Err()
			default: // an error reply such as WRONGTYPE: the flight heals the key
			}
			if count && start.mode == flightNormal {
				c.st.misses.Add(1)
			}
		} else {
			start.mode = flightFallback // breaker open
		}
	}
	if ob != nil {
		switch {
		case start.mode == flightFallback:
			ob.decide(outFallback)
		case c.noCache():
			ob.decide(outBypass)
		default:
			ob.decide(outMiss)
		}
		ctx = c.startSpan(ctx, ob, key)
		start.span = ob.span
	}
	return joinFlight(ctx, c, full, key, ttl, negTTL, load, begin, start, ob)
}

// readOrLease sends SET full token NX GET PX LeaseTTL, bounded by OpTimeout
// within ctx, and returns what the key held (redis.Nil: it was empty and now
// holds token) through outcome, fed to br (full's breaker, which the caller
// has already looked up).
func (c *Cache) readOrLease(ctx context.Context, full, token string, br *breaker) (string, error) {
	opCtx, cancel := c.deadlines.readCtx(ctx, c.cfg.OpTimeout)
	s, err := c.sendRead(opCtx, br, full, token)
	cancel()
	if err == errQueueLeft { // the caller left before the read was sent: nothing to count or release
		br.neutral()
		return "", err
	}
	if err != nil && (redis.HasErrorPrefix(err, "OOM") || redis.HasErrorPrefix(err, "READONLY") ||
		redis.HasErrorPrefix(err, "NOREPLICAS")) {
		// Redis refuses writes — maxmemory with noeviction refuses even a
		// SET NX that would set nothing, a replica every write, a master
		// with min-replicas-to-write and too few replicas likewise — but can
		// still serve hits: read with GET. A miss then cannot take a lease.
		s, err = c.getOnce(ctx, full)
		if err == redis.Nil {
			err = errMissNoLease
		}
		return s, err
	}
	return s, c.outcomeOn(ctx, br, err)
}

// readOrLeaseTTL is readOrLease for a key under the near tier: the read and
// the key's PTTL in one command (a script: such reads are rare, as the near
// tier answers the others), so that a near copy never outlives its entry.
// It is sent like any read (queued and pipelined while Redis is busy, so a
// stampede of near reads costs what one of plain reads does). An error
// reply (OOM, READONLY…) falls back to readOrLease, with pttl -3 (not
// known: nothing is stored).
func (c *Cache) readOrLeaseTTL(ctx context.Context, full, token string, br *breaker) (_ string, pttl time.Duration, _ error) {
	opCtx, cancel := c.deadlines.readCtx(ctx, c.cfg.OpTimeout)
	cmd := redis.NewSliceCmd(opCtx, "evalsha", nearReadScript.Hash(), 1, full, token, c.leasePX)
	err := c.sendCmd(opCtx, br, full, cmd)
	if leftQueue(err) { // cmd may still be written by the pipeline it went out in: not ours to read
		cancel()
		if err == errQueueLeft {
			br.neutral()
			return "", -3, err
		}
		return "", -3, c.outcomeOn(ctx, br, err)
	}
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd = redis.NewSliceCmd(opCtx, "eval", nearReadSource, 1, full, token, c.leasePX)
		_ = c.rdb.Process(opCtx, cmd)
	}
	r, err := cmd.Result()
	cancel()
	var reply redis.Error
	if errors.As(err, &reply) {
		s, err := c.readOrLease(ctx, full, token, br)
		return s, -3, err
	}
	if err = c.outcomeOn(ctx, br, err); err != nil {
		return "", -3, err
	}
	if len(r) != 2 {
		return "", -3, fmt.Errorf("%w: near read: reply of %d elements", ErrUnavailable, len(r))
	}
	pttl = -3
	if ms, ok := r[1].(int64); ok {
		pttl = time.Duration(ms)
		if ms > 0 {
			pttl *= time.Millisecond
		}
	}
	s, ok := r[0].(string)
	if !ok { // nil: the key was empty and now holds our lease
		return "", pttl, redis.Nil
	}
	return s, pttl, nil
}

// leftQueue reports whether sendCmd returned without its command's reply:
// the caller's deadline or cancellation came first (the command may be
// unsent, or in flight in a pipeline that will still write its reply).
func leftQueue(err error) bool {
	return err != nil && (errors.Is(err, errNotSent) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// nearReadSource is the read of a near key: SET key <lease> NX GET PX
// LeaseTTL, and the key's PTTL after it (the entry's, or the new lease's).
const nearReadSource = `
local v = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
return {v, redis.call('PTTL', KEYS[1])}
`

var nearReadScript = redis.NewScript(nearReadSource)

// errMissNoLease is what readOrLease returns for an empty key it could not
// lease (Redis refuses writes): a miss whose flight sorts it out.
var errMissNoLease = errors.New("cachelayer: key empty, lease refused")

// readArgs holds the arguments of one read in one allocation (go-redis
// takes *string arguments as their strings).
type readArgs struct {
	args        [7]any
	full, token string
}

// Kinds of flight, and of the caller that starts or joins one.
const (
	flightNormal   = iota // the caller read Redis and found nothing usable: lease, load, fill
	flightFallback        // the caller's Redis read failed (or the breaker is open): load only
	flightBypass          // SkipRedis: load only, in a group of its own (never answered from Redis)
)

// flightStart is what a caller's read hands to the flight it starts.
type flightStart struct {
	mode      int
	lease     string     // the caller's read put this lease in the key: load and fill at once
	leaseSent time.Time  // when that read was sent (the lease lives at least LeaseTTL from then)
	found     string     // else what the read found (a lease, an undecodable entry), if anything
	span      trace.Span // the caller's span, for the flight's events (nil without traces)
}

// joinFlight starts or joins the flight of full (a load round for
// flightBypass, see loadRounds) and waits for its answer on ctx. A caller
// whose read took a lease leads a new flight; others join the key's flight
// (see flightGroup). start.mode is what the caller's own read found (see
// the flight kinds); only a flightFallback caller, or a plain read in
// no-cache mode, takes an answer whose source began before the caller did
// (degraded modes, see doc.go); a SkipRedis read never does.
func joinFlight[T any](ctx context.Context, c *Cache, full, key string,
	ttl, negTTL time.Duration, load func(context.Context) (T, error), begin int64, start flightStart, ob *fetchObs) (_ T, next int, _ error) {
	var zero T
	mode := start.mode
	if err := ctx.Err(); err != nil && start.lease == "" {
		return zero, answered, err
	}
	run := func(self *flight) any {
		res := runFlight(c, self, full, key, ttl, negTTL, load, start)
		res.prepare()
		return res
	}
	var (
		f      *flight                    // the flight joined, or
		round  <-chan singleflight.Result // the load round joined (flightBypass)
		done   <-chan struct{}
		leader = true
	)
	switch {
	case mode == flightBypass:
		round, leader = c.bypass.join(full, func() any { return run(nil) })
	case start.lease != "":
		f = c.group.lead(full, run)
		done = f.done
	default:
		f, leader = c.group.join(full, run)
		done = f.done
	}
	if c.hookJoined != nil {
		c.hookJoined(full)
	}
	var val any
	for moves := 0; ; moves++ {
		select {
		case <-ctx.Done():
			return zero, answered, ctx.Err()
		case r := <-round:
			val = r.Val
		case <-done:
			val = f.res
		}
		if r, ok := val.(*flightResult[T]); !ok || !r.moved || moves >= maxFlightSteps {
			break
		}
		// The flight found this process's lease and gave way to the flight
		// that holds it: wait for that one instead.
		f, leader = c.group.join(full, run)
		done = f.done
	}
	res, ok := val.(*flightResult[T])
	if !ok { // a flight of the same key with another T: not ours to share
		c.st.loads.Add(1)
		v, err := safeLoad(ctx, c, full, load)
		return v, answered, err
	}
	if res.moved { // flights kept giving way: read again
		return zero, retry, nil
	}
	older := res.src < begin && (res.err == nil || errors.Is(res.err, ErrNotFound))
	degradedCaller := mode == flightFallback || (mode == flightNormal && c.noCache())
	if older && !degradedCaller {
		if res.degraded {
			return zero, retryWithoutRedis, nil
		}
		return zero, retry, nil
	}
	if !leader && res.loaded {
		c.st.loadsShared.Add(1)
		if ob != nil {
			ob.shared = true
			c.count(telLoadsShared, full, 1)
		}
	}
	if mode == flightFallback || res.fallback {
		c.st.fallbacks.Add(1)
		if ob != nil {
			ob.out, ob.set = outFallback, true
		}
	}
	return res.value(), answered, res.err
}

// getOnce sends one GET of full, bounded by OpTimeout within ctx, and
// returns its result through outcome.
func (c *Cache) getOnce(ctx context.Context, full string) (string, error) {
	opCtx, cancel := c.opCtx(ctx)
	s, err := c.rdb.Get(opCtx, full).Result()
	cancel()
	return s, c.outcomeFor(ctx, full, err)
}

// flightResult is what one flight hands to all its callers. It is written
// by the flight's goroutine only, before the flight returns; afterwards its
// callers read it and take their own copies of v through value.
type flightResult[T any] struct {
	v        T
	err      error
	loaded   bool // the answer came from a load (not from Redis)
	moved    bool // no answer: the flight gave way to the newer flight of its key, which holds the lease it found
	fallback bool // the load ran because Redis failed or the breaker was open
	degraded bool // the load ran without a lease (lease wait exhausted, entries changing): not fillable
	// src orders the answer's source against callers' beginnings (Cache.seq):
	// taken when the Redis read that found it, the fill that stored it, or
	// the load that produced it was started. A caller that began after src
	// takes the answer only if its own Redis read failed.
	src int64

	codec Codec
	// enc holds the codec bytes of v (the fill encoded them, Redis returned
	// them, or prepare did), from which callers after the first decode
	// copies of their own.
	enc    string
	hasEnc bool
	taken  atomic.Bool // the first caller has taken v itself
}

// prepare encodes v, unless the flight already has its codec bytes, so that
// callers after the first can decode copies of their own. It runs in the
// flight, before any caller can change v.
func (r *flightResult[T]) prepare() {
	if r.err != nil || r.hasEnc {
		return
	}
	if b, err := r.codec.Marshal(r.v); err == nil {
		r.enc, r.hasEnc = string(b), true
	}
}

// value returns the answer for one caller. The first caller gets v; every
// other one a copy decoded from the codec bytes, so that no two callers
// share memory (a byte slice, a map) that one of them might change. A value
// the codec cannot encode is shared as it is.
func (r *flightResult[T]) value() T {
	if r.err != nil || r.taken.CompareAndSwap(false, true) {
		return r.v
	}
	if !r.hasEnc {
		return r.v
	}
	var v T
	if err := r.codec.Unmarshal([]byte(r.enc), &v); err != nil {
		return r.v
	}
	return v
}

// answerFromRedis makes an entry found in Redis the flight's answer,
// replacing the outcome of any earlier load of the flight (whose fill was
// rejected). payload is the entry's codec bytes.
func (r *flightResult[T]) answerFromRedis(kind entryKind, v T, payload, key string, src int64) {
	r.loaded, r.degraded, r.src = false, false, src
	if kind == entryNotFound {
		var zero T
		r.v, r.err = zero, &notFoundError{key: key}
		return
	}
	r.v, r.err, r.enc, r.hasEnc = v, nil, payload, true
}

// safeLoad calls load, turning a panic into an error that Is [ErrLoaderPanic]
// (logged with its stack), so that a panicking loader fails only the calls
// that shared it: a panic on a flight's goroutine would crash the process,
// where no caller's recovery could catch it.
func safeLoad[T any](ctx context.Context, c *Cache, full string, load func(context.Context) (T, error)) (v T, err error) {
	if c.tel != nil {
		var t0 time.Time
		var span trace.Span
		ctx, t0, span = c.loadSpan(ctx)
		defer func() { c.loadEnd(full, t0, span, err) }() // after the recover below
	}
	defer func() {
		if p := recover(); p != nil {
			var zero T
			pe := &PanicError{Value: p, Stack: debug.Stack()}
			c.log.Error("cachelayer: loader panicked", "key", full, "panic", fmt.Sprint(p), "stack", string(pe.Stack))
			v, err = zero, pe
		}
	}()
	return load(ctx)
}

// runFlight is the body of a flight of full in this process. It runs
// detached from every caller. Each load gets a context of its own, bounded
// by LoadTimeout, so a reload after a rejected fill has as long as the first
// load had; Redis calls are bounded by OpTimeout each. start is what the
// read of the caller that started it found: its own lease (load at once),
// another's lease or an undecodable entry (the first step deals with it).
func runFlight[T any](c *Cache, self *flight, full, key string, ttl, negTTL time.Duration,
	load func(context.Context) (T, error), start flightStart) *flightResult[T] {
	ctx := context.Background()
	if start.span != nil { // the leader's span: the loads' parent
		ctx = trace.ContextWithSpan(ctx, start.span)
	}
	res := &flightResult[T]{codec: c.codec}
	loadOnce := func() {
		c.st.loads.Add(1)
		res.loaded, res.degraded = true, false
		res.src = c.seq.Add(1)
		lctx, cancel := context.WithTimeout(ctx, c.cfg.LoadTimeout)
		res.v, res.err = safeLoad(lctx, c, full, load)
		cancel()
		res.enc, res.hasEnc = "", false
	}
	degraded := func() *flightResult[T] { // a load that is not checked against a lease
		loadOnce()
		res.degraded = true
		return res
	}
	fallback := func() *flightResult[T] {
		res.fallback = c.rdb != nil && !c.closed.Load()
		loadOnce()
		return res
	}

	switch {
	case start.mode == flightBypass:
		loadOnce()
		return res
	case start.mode == flightFallback || c.noCache() || !c.enter():
		return fallback() // a lease the caller's read took expires by itself
	}
	defer c.wg.Done()
	c.trackFlight(full, 1)
	defer c.trackFlight(full, -1)

	var (
		expect      *string   // an undecodable entry the next lease may replace
		leaseWaitTo time.Time // deadline of waiting for another's lease; zero: not waiting
		wake        chan struct{}
		reloads     int
		steps       int  // Redis steps taken, bounded by maxFlightSteps
		polls       int  // re-checks while waiting without a subscription
		recheck     bool // the next step re-checks a lease we waited for: not counted in steps
		counted     bool // this flight counts in LeaseWaits
	)
	defer func() {
		if wake != nil {
			c.notes.unregister(full, wake)
		}
	}()
	first := true
	for {
		var (
			got       int
			raw       string
			token     string
			sent      int64
			leaseSent time.Time
		)
		switch {
		case first && start.lease != "":
			got, token, leaseSent = leaseTaken, start.lease, start.leaseSent
		case first && start.found != "":
			got, raw = leaseFound, start.found
		default:
			if !recheck {
				if steps++; steps > maxFlightSteps {
					return degraded() // entries changing under us: load without filling
				}
			}
			recheck = false
			if !c.breakerFor(full).allow() {
				return fallback()
			}
			token = c.tokens.next()
			sent = c.seq.Add(1)
			leaseSent = time.Now()
			var err error
			got, raw, err = c.step(ctx, full, token, expect, wake != nil)
			expect = nil
			if err != nil {
				if mayHaveTakenEffect(err) {
					c.releaseOrphan(full, token) // the step may have taken the lease
				}
				return fallback() // failure counted by step
			}
		}
		first = false
		switch got {
		case leaseHealed:
			c.st.corrupt.Add(1)
			c.count(telCorrupt, full, 1)
			spanEvent(start.span, "corrupt")
			fallthrough
		case leaseTaken:
			keeper := c.keepLease(full, token, leaseSent)
			loadOnce()
			validUntil := keeper.stop()
			filled, voided := c.fill(ctx, full, token, ttl, negTTL, res, validUntil)
			switch {
			case filled:
				spanEvent(start.span, "fill")
			case voided:
				spanEvent(start.span, "fill.rejected")
			}
			if filled || reloads >= maxReloads {
				return res
			}
			if !voided {
				// The lease lapsed (Redis failed while we renewed it), so
				// nothing says the value is stale; but nothing says it is
				// fresh either: load again under a new lease.
				c.log.Debug("cachelayer: lease lapsed during a load; loading again", "key", full)
			}
			reloads++
			continue
		}

		// The key holds something: use it, or wait for another's lease.
		var v T
		kind, _ := decodeEntry(c.codec, raw, &v)
		switch kind {
		case entryValue, entryNotFound:
			if sent == 0 { // found by the caller's read, which counts as its source
				sent = c.seq.Add(1)
			}
			_, payload := classify(raw)
			res.answerFromRedis(kind, v, payload, key, sent)
			return res
		case entryCorrupt:
			c.st.corrupt.Add(1)
			c.count(telCorrupt, full, 1)
			spanEvent(start.span, "corrupt")
			expect = &raw
			continue
		}
		// entryLease: another process (or another flight of ours) is loading.
		own := c.tokens.owns(raw)
		if !own && !counted {
			counted = true
			c.st.leaseWaits.Add(1)
			c.count(telLeaseWaits, full, 1)
			spanEvent(start.span, "lease.wait")
			if c.hookLeaseWait != nil {
				c.hookLeaseWait(full)
			}
		}
		if leaseWaitTo.IsZero() {
			leaseWaitTo = time.Now().Add(c.cfg.LeaseWait)
		}
		// A lease of our own: the caller whose read took it is about to
		// replace this flight (a moment's race), so wait for that, polling
		// Redis meanwhile without marking the lease.
		if !own && wake == nil {
			// Register, make sure the subscription is confirmed, then read
			// the key once more (the next step, which also marks the lease):
			// a fill that published before we were registered and
			// subscribed — even of a lease another waiter had marked — is
			// then seen by that read, and any later one wakes us.
			wake = c.notes.register(full)
			if c.notes.ensure(c) {
				continue
			}
			c.notes.unregister(full, wake)
			wake = nil
		}
		var replaced chan struct{}
		if own && self != nil {
			replaced = self.replaced // the caller that took it leads a flight that replaces this one
		}
		w := wake
		if own {
			w = nil // poll: our own fill might not publish
		}
		switch waitLease(c, w, replaced, leaseWaitTo, &polls) {
		case waitTimedOut:
			// Degraded: the holder did not fill in time; load without
			// filling (the value may be one load-duration old, see doc.go).
			return degraded()
		case waitReplaced:
			res.moved = true
			return res
		}
		recheck = true
	}
}

// Limits of one flight's loop.
const (
	maxReloads     = 1 // loads after a rejected fill, before answering anyway
	maxFlightSteps = 8 // Redis steps other than lease re-checks (corrupt entries, vanished leases) before loading without Redis
)

// leaseRecheck is how often a flight subscribed to fill notifications
// re-reads a key whose lease it waits for, in case a notification was lost
// (a reconnect of the subscription, a Delete of the marked lease): a quarter
// of LeaseWait.
func (c *Cache) leaseRecheck() time.Duration { return max(c.cfg.LeaseWait/4, time.Millisecond) }

// Outcomes of waitLease.
const (
	waitRecheck  = iota // read the key again
	waitTimedOut        // LeaseWait passed
	waitReplaced        // a newer flight of the key (holding the lease) replaced this one
)

// waitLease waits until a flight waiting for a lease should read the key
// again: woken by a fill notification (wake, when subscribed), at the next
// slow re-check, or — without a subscription — after a polling backoff
// (5 ms doubling to 50 ms; polls counts them). It returns waitTimedOut once
// deadline has passed, and waitReplaced when replaced (nil unless the lease
// is this process's own) is closed.
func waitLease(c *Cache, wake, replaced chan struct{}, deadline time.Time, polls *int) int {
	left := time.Until(deadline)
	if left <= 0 {
		return waitTimedOut
	}
	wait := c.leaseRecheck()
	if wake == nil {
		wait = min(5*time.Millisecond<<min(*polls, 4), 50*time.Millisecond)
		*polls++
	}
	t := time.NewTimer(min(wait, left))
	defer t.Stop()
	select {
	case <-replaced:
		return waitReplaced
	case <-wake: // nil without a subscription: never ready
	case <-t.C:
		if !time.Now().Before(deadline) {
			return waitTimedOut
		}
	}
	return waitRecheck
}

// Results of step.
const (
	leaseTaken  = iota // the key was empty (or held the expected entry); our lease is in it
	leaseHealed        // the key held another type (e.g. a hash); replaced by our lease
	leaseFound         // the key holds an entry, returned as raw
)

// step re-checks full and takes a lease on it unless it holds an entry
// (see stepScript); with mark, a plain lease found is marked "has waiters".
// An error it returns Is ErrUnavailable (or is the context's).
func (c *Cache) step(ctx context.Context, full, token string, expect *string, mark bool) (int, string, error) {
	mode, exp, m := "0", "", "0"
	if expect != nil {
		mode, exp = "1", *expect
	}
	if mark {
		m = "1"
	}
	opCtx, cancel := c.opCtx(ctx)
	r, err := stepScript.Run(opCtx, c.rdb, []string{full}, token, c.cfg.LeaseTTL.Milliseconds(), mode, exp, m).Slice()
	cancel()
	if err = c.outcomeFor(ctx, full, err); err != nil {
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

// fill stores the outcome of a load (res) under the lease token. filled
// is false only when the fill was refused because the lease was no longer
// in the key; voided then says whether an invalidation removed it (counted
// in StaleFillsRejected) rather than its expiry: the lease was renewed up to
// validUntil, so a lease missing before then was voided. The caller should
// reload either way. Values that cannot or must not be cached release the
// lease instead; a Redis failure is counted and ignored (the loaded value is
// still the answer).
//
// When the fill succeeds, res.src becomes the sequence number taken as it
// was sent: a caller that began before that is answered by a value no
// invalidation preceded (one would have voided the lease).
func (c *Cache) fill(ctx context.Context, full, token string, ttl, negTTL time.Duration, res fillable, validUntil time.Time) (filled, voided bool) {
	var entry string
	var px int64
	v, loadErr := res.outcome()
	switch {
	case loadErr != nil && errors.Is(loadErr, ErrNotFound):
		entry, px = notFoundEntry, c.jittered(negTTL)
	case loadErr != nil:
		c.release(ctx, full, token) // loader errors (and panics) are never cached
		return true, false
	default:
		b, err := encodeValue(c.codec, v)
		if err != nil {
			c.log.Warn("cachelayer: value not cached: encode failed", "key", full, "err", err)
			c.release(ctx, full, token)
			return true, false
		}
		if len(b) > c.cfg.MaxValueBytes {
			c.st.oversize.Add(1)
			c.release(ctx, full, token)
			return true, false
		}
		entry, px = string(b), c.jittered(ttl)
		res.setEncoded(payloadOf(entry))
	}
	br := c.breakerFor(full)
	if !br.allow() {
		return true, false // the lease expires by itself
	}
	opCtx, cancel := c.opCtx(ctx)
	sent := c.seq.Add(1)
	// EVALSHA, sent like a read (pipelined with the reads waiting while
	// the master's slots are busy); EVAL loads the script after a NOSCRIPT.
	cmd := redis.NewIntCmd(opCtx, "evalsha", fillScript.Hash(), 1, full, token, entry, px, c.notes.channel)
	err := c.sendCmd(opCtx, br, full, cmd)
	if leftQueue(err) { // cmd may still be written by the pipeline it went out in: not ours to read
		cancel()
		if err == errQueueLeft {
			br.neutral()
		} else {
			_ = c.outcomeOn(ctx, br, err)
		}
		return true, false
	}
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd = redis.NewIntCmd(opCtx, "eval", fillSource, 1, full, token, entry, px, c.notes.channel)
		_ = c.rdb.Process(opCtx, cmd)
	}
	n, err := cmd.Result()
	cancel()
	if err = c.outcomeOn(ctx, br, err); err != nil {
		return true, false
	}
	if n == 1 {
		res.filledAt(sent)
		if c.hookFilled != nil {
			c.hookFilled(full)
		}
		return true, false
	}
	if time.Now().Before(validUntil) {
		c.st.staleFillsRejected.Add(1)
		c.count(telFillsRejected, full, 1)
		return false, true
	}
	return false, false
}

// fillable is the part of a flightResult that fill needs, whatever its T.
type fillable interface {
	outcome() (any, error)
	setEncoded(payload string)
	filledAt(src int64)
}

func (r *flightResult[T]) outcome() (any, error)     { return r.v, r.err }
func (r *flightResult[T]) setEncoded(payload string) { r.enc, r.hasEnc = payload, true }
func (r *flightResult[T]) filledAt(src int64)        { r.src = src }

// mayHaveTakenEffect reports whether a command that failed with err may
// still have run on Redis: anything but an error reply (which Redis sends
// instead of running it).
func mayHaveTakenEffect(err error) bool {
	var reply redis.Error
	return !errors.As(err, &reply)
}

// releaseOrphan releases token's lease on full in the background (a read
// whose reply was lost may have set it), bounded by InvalidateTimeout;
// Close waits for it.
func (c *Cache) releaseOrphan(full, token string) {
	if !c.enter() {
		return
	}
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.InvalidateTimeout)
		defer cancel()
		c.release(ctx, full, token)
	}()
}

// release gives up a lease so others need not wait for it to expire.
func (c *Cache) release(ctx context.Context, full, token string) {
	if !c.breakerFor(full).allow() {
		return
	}
	opCtx, cancel := c.opCtx(ctx)
	err := releaseScript.Run(opCtx, c.rdb, []string{full}, token, c.notes.channel).Err()
	cancel()
	_ = c.outcomeFor(ctx, full, err)
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
