package cachelayer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// Tests of interleavings that broke a promise of doc.go once. Each fails
// without the change that closed it.

// TestDeleteFullOfClosedCacheIsUnavailable: after Close nothing reaches
// Redis, so DeleteFull must not report success (an outbox would drop its row).
func TestDeleteFullOfClosedCacheIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 10*time.Second)
	c, _ := realCache(t, nil)
	if err := c.DeleteFull(ctx, c.FullKey("k")); err != nil {
		t.Fatalf("DeleteFull on a healthy cache: %v", err)
	}
	if !c.Enabled() {
		t.Fatal("Enabled false before Close")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if c.Enabled() {
		t.Fatal("Enabled true after Close")
	}
	if err := c.DeleteFull(ctx, c.FullKey("k")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("DeleteFull after Close: %v, want ErrUnavailable", err)
	}
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete after Close: %v, want nil (no-cache mode)", err)
	}
}

// failOnceClient fails its first Fetch read (the SET NX GET) as a timeout
// would, then behaves.
type failOnceClient struct {
	*redis.Client
	failed atomic.Bool
}

func (f *failOnceClient) Process(ctx context.Context, cmd redis.Cmder) error {
	if cmd.Name() == "set" && !f.failed.Swap(true) {
		err := errors.New("i/o timeout (injected)")
		cmd.SetErr(err)
		return err
	}
	return f.Client.Process(ctx, cmd)
}

// TestFallbackFlightNotTakenByAFreshReader: one failed GET turns a flight
// into a fallback load; another process then writes and invalidates; a
// reader that begins after that, whose own GET succeeded, must not take the
// fallback load's older answer.
func TestFallbackFlightNotTakenByAFreshReader(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	prefix := testsvc.Prefix(t)
	fc := &failOnceClient{Client: testsvc.Redis(t)}
	a := cacheOn(t, fc, &Config{Prefix: prefix, BreakerFailures: 100})
	b := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})

	var source atomic.Int64 // the source of truth
	source.Store(1)
	held := releaser(t)
	loading := make(chan struct{}, 1)
	var loads atomic.Int64
	load := func(context.Context) (row, error) {
		v := sampleRow(source.Load())
		if loads.Add(1) == 1 {
			loading <- struct{}{}
			<-held.ch // the fallback load read version 1 and is slow
		}
		return v, nil
	}
	joined := make(chan struct{}, 4)
	a.hookJoined = func(string) { joined <- struct{}{} }

	first := fetchAsync(ctx, t, a, "k", load)
	<-joined
	<-loading // the fallback flight has read the old value

	// Process B writes and invalidates; it completes.
	source.Store(2)
	if err := b.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}

	second := fetchAsync(ctx, t, a, "k", load)
	<-joined // the second reader's GET found nothing and it joined the flight
	held.do()

	if got := <-first; got != sampleRow(1) && got != sampleRow(2) {
		t.Errorf("first reader got %+v", got)
	}
	if got := <-second; got != sampleRow(2) {
		t.Fatalf("a read that began after the invalidation returned %+v, want version 2", got)
	}
}

// TestSlowLoadKeepsItsLease: a load slower than LeaseTTL (within
// LoadTimeout) keeps its lease, fills, and answers its callers and those of
// another process with one load.
func TestSlowLoadKeepsItsLease(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	prefix := testsvc.Prefix(t)
	cfg := &Config{Prefix: prefix, LeaseTTL: 150 * time.Millisecond, LeaseWait: 10 * time.Second, LoadTimeout: 10 * time.Second}
	a := cacheOn(t, testsvc.Redis(t), cfg)
	b := cacheOn(t, testsvc.Redis(t), cfg)

	renewed := make(chan struct{}, 100)
	a.hookLeaseRenewed = func(string) { renewed <- struct{}{} }
	waiting := make(chan struct{}, 1)
	b.hookLeaseWait = func(string) { waiting <- struct{}{} }
	var loads atomic.Int64
	load := func(ctx context.Context) (row, error) {
		if loads.Add(1) == 1 {
			// Outlive the lease several times over: wait for three
			// renewals (or give up after what would be six LeaseTTLs).
			giveUp := time.After(6 * cfg.LeaseTTL)
			for range 3 {
				select {
				case <-renewed:
				case <-giveUp:
					return sampleRow(1), nil
				}
			}
			<-waiting // the other process is waiting for this lease
		}
		return sampleRow(1), nil
	}
	var wg sync.WaitGroup
	for _, c := range []*Cache{a, b} {
		wg.Go(func() {
			v, err := Fetch(ctx, c, "k", time.Minute, load)
			if err != nil || v != sampleRow(1) {
				t.Errorf("Fetch: %+v, %v", v, err)
			}
		})
		if c == a {
			waitFor(t, 10*time.Second, "a's load to start", func() bool { return loads.Load() == 1 })
		}
	}
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Errorf("loads %d, want 1 (the lease lapsed and the fill was refused)", n)
	}
	if st := a.Stats(); st.StaleFillsRejected != 0 {
		t.Errorf("StaleFillsRejected %d: nothing invalidated the key", st.StaleFillsRejected)
	}
	requireHolds(ctx, t, a, "k", sampleRow(1), "after the slow load")
}

// TestReloadHasItsOwnLoadTimeout: the reload after a rejected fill gets a
// full LoadTimeout, not what the first load left of a shared deadline.
func TestReloadHasItsOwnLoadTimeout(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	c, _ := realCache(t, &Config{LoadTimeout: 10 * time.Second})
	var deadlines []time.Time
	held := releaser(t)
	loading := make(chan struct{}, 1)
	load := func(ctx context.Context) (row, error) {
		d, _ := ctx.Deadline()
		deadlines = append(deadlines, d) // loads of one flight run one after another
		if len(deadlines) == 1 {
			loading <- struct{}{}
			<-held.ch
		}
		return sampleRow(int64(len(deadlines))), nil
	}
	done := fetchAsync(ctx, t, c, "k", load)
	<-loading
	if err := c.Delete(ctx, "k"); err != nil { // voids the lease: the fill is refused
		t.Fatal(err)
	}
	held.do()
	if v := <-done; v != sampleRow(2) {
		t.Fatalf("got %+v, want the reload's value", v)
	}
	if len(deadlines) != 2 || !deadlines[1].After(deadlines[0]) {
		t.Fatalf("load deadlines %v: the reload must get a deadline of its own", deadlines)
	}
	if st := c.Stats(); st.StaleFillsRejected != 1 {
		t.Errorf("StaleFillsRejected %d, want 1", st.StaleFillsRejected)
	}
}

// spec is a value with memory a caller could change in place.
type spec struct {
	ID   int64           `json:"id"`
	Spec json.RawMessage `json:"spec"`
	Tags map[string]int  `json:"tags"`
}

// TestSharedFlightCallersOwnTheirValues: callers served by one load get
// values that share no memory (with Redis, and in no-cache mode).
func TestSharedFlightCallersOwnTheirValues(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"redis", "no-cache"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t, 20*time.Second)
			var c *Cache
			if mode == "redis" {
				c, _ = realCache(t, nil)
			} else {
				c = New(nil, nil)
			}
			const n = 8
			joined := make(chan struct{}, n)
			c.hookJoined = func(string) { joined <- struct{}{} }
			held := releaser(t)
			load := func(context.Context) (spec, error) {
				<-held.ch
				return spec{ID: 1, Spec: json.RawMessage(`{"a":1}`), Tags: map[string]int{"x": 1}}, nil
			}
			results := make([]spec, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					v, err := Fetch(ctx, c, "k", time.Minute, load)
					if err != nil {
						t.Error(err)
						return
					}
					// Each request changes its own copy (a data race under
					// -race if shared).
					v.Spec[2] = 'b'
					v.Tags["x"] = i
					results[i] = v
				})
			}
			for range n {
				<-joined
			}
			held.do()
			wg.Wait()
			if st := c.Stats(); st.Loads != 1 {
				t.Fatalf("loads %d, want 1", st.Loads)
			}
			for i := range n {
				for j := range i {
					if &results[i].Spec[0] == &results[j].Spec[0] {
						t.Fatalf("callers %d and %d share one Spec", i, j)
					}
					if reflect.ValueOf(results[i].Tags).UnsafePointer() == reflect.ValueOf(results[j].Tags).UnsafePointer() {
						t.Fatalf("callers %d and %d share one map", i, j)
					}
				}
			}
		})
	}
}

// TestSkipRedisSharesOneLoad: reads that must not use Redis (a pending
// invalidation) share loads like every other read, never take a load older
// than themselves, and never touch Redis.
func TestSkipRedisSharesOneLoad(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 30*time.Second)
	c, _ := realCache(t, nil)
	if err := c.Set(ctx, "k", sampleRow(1), time.Minute); err != nil { // the stale value
		t.Fatal(err)
	}
	const n = 200
	joined := make(chan struct{}, 2*n)
	c.hookJoined = func(string) { joined <- struct{}{} }
	held := releaser(t)
	var loads atomic.Int64
	load := func(context.Context) (row, error) {
		if loads.Add(1) == 1 {
			<-held.ch
		}
		return sampleRow(2), nil
	}
	opts := FetchOptions{TTL: time.Minute, SkipRedis: true}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			v, err := FetchWith(ctx, c, "k", opts, load)
			if err != nil || v != sampleRow(2) {
				t.Errorf("FetchWith: %+v %v", v, err)
			}
		})
	}
	for range n {
		<-joined
	}
	held.do()
	wg.Wait()
	// The first caller's load, then one for the 199 that arrived meanwhile.
	if l := loads.Load(); l != 2 {
		t.Fatalf("%d concurrent SkipRedis reads cost %d loads, want 2", n, l)
	}
	requireHolds(ctx, t, c, "k", sampleRow(1), "SkipRedis reads must not touch Redis")
}

// TestSkipRedisNeverTakesAnOlderLoad: a SkipRedis read that begins while
// another's load runs waits for a load of its own beginning.
func TestSkipRedisNeverTakesAnOlderLoad(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	c := New(nil, nil)
	var source atomic.Int64
	source.Store(1)
	joined := make(chan struct{}, 4)
	c.hookJoined = func(string) { joined <- struct{}{} }
	held := releaser(t)
	loading := make(chan struct{}, 1)
	var loads atomic.Int64
	load := func(context.Context) (row, error) {
		v := sampleRow(source.Load())
		if loads.Add(1) == 1 {
			loading <- struct{}{}
			<-held.ch
		}
		return v, nil
	}
	opts := FetchOptions{TTL: time.Minute, SkipRedis: true}
	first := make(chan row, 1)
	go func() { v, _ := FetchWith(ctx, c, "k", opts, load); first <- v }()
	<-joined
	<-loading
	source.Store(2) // a write commits while the first load runs
	second := make(chan row, 1)
	go func() { v, _ := FetchWith(ctx, c, "k", opts, load); second <- v }()
	<-joined
	held.do()
	<-first
	if got := <-second; got != sampleRow(2) {
		t.Fatalf("a read that began after the write got %+v", got)
	}
}

// TestHotKeyReadersWaitOpTimeoutWhenRedisHangs: readers of one hot key on
// a Redis that never answers each wait at most about OpTimeout for their
// own read (no reader waits for another's read and then its own), then
// share one fallback load.
func TestHotKeyReadersWaitOpTimeoutWhenRedisHangs(t *testing.T) {
	t.Parallel()
	hole := testsvc.StartBlackHole(t)
	rdb := redis.NewClient(&redis.Options{Addr: hole.Addr, MaxRetries: -1, ContextTimeoutEnabled: true,
		ReadTimeout: 30 * time.Second, DialTimeout: time.Second})
	const opTimeout = 100 * time.Millisecond
	c := New(rdb, &Config{Prefix: testsvc.Prefix(t), OpTimeout: opTimeout, BreakerFailures: 1000, Logger: (&logBuffer{}).logger()})
	t.Cleanup(func() { _ = c.Close() })
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := ctxT(t, 10*time.Second)
	held := releaser(t)
	load := func(context.Context) (row, error) { <-held.ch; return sampleRow(1), nil }
	const n = 8
	joined := make(chan struct{}, n)
	c.hookJoined = func(string) { joined <- struct{}{} }
	results := make(chan error, n)
	for range n {
		go func() {
			v, err := Fetch(ctx, c, "k", time.Minute, load)
			if err == nil && v != sampleRow(1) {
				err = fmt.Errorf("got %+v", v)
			}
			results <- err
		}()
	}
	// Every reader's own read times out and it joins the fallback flight,
	// whose load is held: all n join, so none waited for a read of another.
	for range n {
		<-joined
	}
	held.do()
	for range n {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if st := c.Stats(); st.Fallbacks != n || st.Loads != 1 || st.RedisErrors != n {
		t.Errorf("stats %+v, want %d fallbacks sharing 1 load", st, n)
	}
}

// TestJSONRoundTripsHTMLCharacters: a hit returns exactly what the loader
// returned, also for a json.RawMessage holding & < >.
func TestJSONRoundTripsHTMLCharacters(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 10*time.Second)
	c, _ := realCache(t, nil)
	want := spec{ID: 1, Spec: json.RawMessage(`{"html":"<a href=\"x?a=1&b=2\">&amp;</a>","u":"\u2028"}`), Tags: map[string]int{"<&>": 1}}
	load := func(context.Context) (spec, error) { return want, nil }
	if _, err := Fetch(ctx, c, "k", time.Minute, load); err != nil {
		t.Fatal(err)
	}
	got, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (spec, error) {
		t.Error("unexpected load")
		return spec{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Hits != 1 {
		t.Fatalf("hits %d, want 1", st.Hits)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("hit %s, want %s", got.Spec, want.Spec)
	}
}

// TestLoaderPanicFailsOnlyItsCallers: a panicking loader makes its callers
// get ErrLoaderPanic, crashes nothing, leaves no lease behind, and is not
// cached — with Redis and in no-cache mode.
func TestLoaderPanicFailsOnlyItsCallers(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"redis", "no-cache"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t, 20*time.Second)
			logs := &logBuffer{}
			var c *Cache
			if mode == "redis" {
				c, _ = realCache(t, &Config{Logger: logs.logger()})
			} else {
				c = New(nil, &Config{Logger: logs.logger()})
			}
			const n = 10
			joined := make(chan struct{}, n)
			c.hookJoined = func(string) { joined <- struct{}{} }
			held := releaser(t)
			bad := func(context.Context) (row, error) {
				<-held.ch
				panic("loader bug")
			}
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					_, err := Fetch(ctx, c, "k", time.Minute, bad)
					var pe *PanicError
					if !errors.Is(err, ErrLoaderPanic) || !errors.As(err, &pe) || pe.Value != "loader bug" {
						t.Errorf("err %v, want a PanicError", err)
					}
				})
			}
			for range n {
				<-joined
			}
			held.do()
			wg.Wait()
			if !containsStr(logs.String(), "loader panicked") {
				t.Error("the panic was not logged")
			}
			if mode == "redis" {
				exists, err := c.rdb.Exists(ctx, c.FullKey("k")).Result()
				if err != nil || exists != 0 {
					t.Fatalf("after the panic the key exists=%d (%v): a lease was left behind", exists, err)
				}
			}
			v, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (row, error) { return sampleRow(1), nil })
			if err != nil || v != sampleRow(1) {
				t.Fatalf("after the panic: %+v %v", v, err)
			}
			if st := c.Stats(); st.LeaseWaits != 0 {
				t.Errorf("LeaseWaits %d", st.LeaseWaits)
			}
		})
	}
}

// wrappedClient is a UniversalClient decorator of a kind the cache does not
// know (as instrumentation wrappers are).
type wrappedClient struct{ redis.UniversalClient }

// TestDeletePrefixOnUnknownClientLeavesBreakerUsable: DeletePrefix on a
// client it cannot SCAN returns ErrInvalid without taking the breaker's
// half-open probe, so the breaker still closes when Redis is back.
func TestDeletePrefixOnUnknownClientLeavesBreakerUsable(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	proxy := testsvc.StartProxy(t, testsvc.Redis(t).Options().Addr)
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr, ContextTimeoutEnabled: true, MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	const cooldown = 20 * time.Millisecond
	c := cacheOn(t, wrappedClient{rdb}, &Config{BreakerFailures: 1, BreakerCooldown: cooldown, Logger: (&logBuffer{}).logger()})
	load := func(context.Context) (row, error) { return sampleRow(1), nil }

	proxy.Block()
	if _, err := Fetch(ctx, c, "k", time.Minute, load); err != nil {
		t.Fatal(err)
	}
	if !c.Stats().BreakerOpen {
		t.Fatal("breaker not open after a failure")
	}
	proxy.Open()
	waitFor(t, 5*time.Second, "the cooldown to pass", func() bool {
		c.br.mu.Lock()
		defer c.br.mu.Unlock()
		return time.Since(c.br.openedAt) > cooldown
	})
	if _, err := c.DeletePrefix(ctx, "k"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("DeletePrefix on %T: %v, want ErrInvalid", c.rdb, err)
	}
	waitFor(t, 5*time.Second, "the breaker to close", func() bool {
		if _, err := Fetch(ctx, c, "k", time.Minute, load); err != nil {
			t.Fatal(err)
		}
		return !c.Stats().BreakerOpen
	})
}

// loseReplyHook runs a command on Redis and then reports its reply lost
// (the caller's context ended, or the connection dropped, after Redis ran
// it), once per lose signal.
type loseReplyHook struct{ lose atomic.Bool }

func (h *loseReplyHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *loseReplyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "set" && h.lose.CompareAndSwap(true, false) {
			cmd.SetErr(context.DeadlineExceeded)
			return context.DeadlineExceeded
		}
		return err
	}
}
func (h *loseReplyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestLostReadReplyReleasesItsLease: a read of an empty key whose reply is
// lost after Redis ran its SET NX leaves a lease that no flight of this
// process owns; the cache releases it, so another process does not wait
// LeaseWait for a fill that never comes and the key is cached again at
// once, not after LeaseTTL.
func TestLostReadReplyReleasesItsLease(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	rdb := testsvc.Redis(t)
	h := &loseReplyHook{}
	rdb.AddHook(h)
	cfg := &Config{LeaseTTL: time.Minute, LeaseWait: time.Minute, LoadTimeout: time.Minute}
	c := cacheOn(t, rdb, cfg)
	h.lose.Store(true)
	v, err := Fetch(ctx, c, "k", time.Minute, func(context.Context) (row, error) { return sampleRow(1), nil })
	if err != nil || v != sampleRow(1) {
		t.Fatalf("Fetch = %+v, %v: a lost reply falls back to the loader", v, err)
	}
	waitFor(t, 10*time.Second, "the orphaned lease to be released", func() bool {
		s, err := rdb.Get(ctx, c.FullKey("k")).Result()
		return err == redis.Nil || (err == nil && !(len(s) == leaseLen && s[0] == leaseMagic))
	})
	// Another process reads at once: no lease to wait for.
	other := cacheOn(t, testsvc.Redis(t), &Config{Prefix: c.prefix, LeaseTTL: time.Minute, LeaseWait: time.Minute})
	v, err = Fetch(ctx, other, "k", time.Minute, func(context.Context) (row, error) { return sampleRow(2), nil })
	if err != nil || v != sampleRow(2) {
		t.Fatalf("other process: %+v, %v", v, err)
	}
	if st := other.Stats(); st.LeaseWaits != 0 {
		t.Fatalf("the other process waited for an orphaned lease: %+v", st)
	}
}
