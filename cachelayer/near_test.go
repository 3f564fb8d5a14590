package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// nearPrefix is the key prefix the near tests put under the near tier.
const nearPrefix = "n:"

// nearHooks are the test hooks of one Cache's near tier, as channels.
type nearHooks struct {
	invalidated chan []string // each tracking message applied (nil: everything)
	serving     chan bool     // each change of serving
	subscribe   func(addr string)
}

// nearOn turns the near tier on for nearPrefix on c (hooks set before the
// tier starts) and waits until it serves.
func nearOn(t testing.TB, c *Cache, h *nearHooks) {
	t.Helper()
	c.hookNearNew = func(n *nearTier) {
		if h == nil {
			return
		}
		if h.invalidated != nil {
			n.hookInvalidated = func(keys []string) {
				select {
				case h.invalidated <- keys:
				default: // nobody waits for this one
				}
			}
		}
		if h.serving != nil {
			n.hookServing = func(s bool) { h.serving <- s }
		}
		n.hookSubscribe = h.subscribe
	}
	if err := c.EnableNear(nearPrefix); err != nil {
		t.Fatal(err)
	}
	if !c.WaitNear(ctxT(t, 10*time.Second)) {
		t.Fatal("near tier not serving after 10 s")
	}
	if h != nil && h.serving != nil {
		if s := <-h.serving; !s {
			t.Fatal("first serving change was not to serving")
		}
	}
}

// waitInvalidated waits for a tracking message naming full (or a flush,
// when full is "").
func waitInvalidated(t testing.TB, ch chan []string, full string) {
	t.Helper()
	tm := time.NewTimer(10 * time.Second)
	defer tm.Stop()
	for {
		select {
		case keys := <-ch:
			if (full == "" && keys == nil) || slices.Contains(keys, full) {
				return
			}
		case <-tm.C:
			t.Fatalf("no invalidation of %q within 10 s", full)
		}
	}
}

// caughtUp waits until c's near tier has applied every invalidation Redis
// sent before now (a PING sent after now has been answered), then empties
// ch: what it holds from then on is news.
func caughtUp(t testing.TB, c *Cache, ch chan []string) {
	t.Helper()
	n := c.near.Load()
	mark := n.now()
	deadline := time.Now().Add(10 * time.Second)
	for n.behind.Load() <= mark {
		n.wanted.Store(true)
		if time.Now().After(deadline) {
			t.Fatal("near tier did not catch up within 10 s")
		}
		time.Sleep(time.Millisecond) // polling the tracker's mark, with a deadline
	}
	drain(ch)
}

// drain empties ch (messages of earlier changes, such as fills).
func drain(ch chan []string) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// nearHit fetches key until one call is answered from the near tier (the
// first reads store it; a copy raced by the fill's own invalidation, or a
// tier that has not caught up yet, needs another), within 10 s, and
// returns that call's value.
func nearHit[T any](t testing.TB, ctx context.Context, c *Cache, key string, ttl time.Duration, load func(context.Context) (T, error)) (T, error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := c.Stats().NearHits
		v, err := Fetch(ctx, c, key, ttl, load)
		if c.Stats().NearHits > before {
			return v, err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no near hit within 10 s: %+v", key, c.Stats())
		}
	}
}

// clonable is a value with memory a caller could change, and a Clone.
type clonable struct {
	Name string
	Body []byte
}

func (s clonable) Clone() clonable { s.Body = slices.Clone(s.Body); return s }

// blob has a slice and no Clone: the near tier decodes a copy per hit.
type blob struct {
	Tags []string
}

// A near hit costs no round trip and each caller gets a value of its own:
// shared as is when it holds no mutable memory, cloned when it has Clone,
// decoded otherwise.
func TestNearHitIsNoRoundTrip(t *testing.T) {
	t.Parallel()
	c, h := countedCache(t, nil)
	nearOn(t, c, nil)
	ctx := ctxT(t, 20*time.Second)
	var loads atomic.Int64
	key := nearPrefix + "row"
	load := func(context.Context) (row, error) { loads.Add(1); return sampleRow(1), nil }
	for i := range 2 {
		v, err := Fetch(ctx, c, key, time.Minute, load)
		if err != nil || v != sampleRow(1) {
			t.Fatalf("fetch %d: %+v %v", i, v, err)
		}
		names, trips := h.take()
		want := []int{2, 1}[i] // miss: the near read (with PTTL), fill; Redis hit: the near read
		if trips != want {
			t.Fatalf("fetch %d: %d round trips %v, want %d", i, trips, names, want)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for hit := false; !hit; {
		before := c.Stats().NearHits
		_, _ = h.take()
		if v, err := Fetch(ctx, c, key, time.Minute, load); err != nil || v != sampleRow(1) {
			t.Fatalf("fetch: %+v %v", v, err)
		}
		names, trips := h.take()
		if hit = c.Stats().NearHits > before; hit && trips != 0 {
			t.Fatalf("a near hit cost %d round trips %v", trips, names)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no near hit within 10 s: %+v", c.Stats())
		}
	}
	st := c.Stats()
	if loads.Load() != 1 || st.NearHits != 1 || st.NearStored < 1 || st.NearEntries != 1 || !st.NearServing {
		t.Fatalf("loads %d, stats %+v", loads.Load(), st)
	}

	// Each caller owns its value.
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"clone", func() error {
			k := nearPrefix + "clonable"
			load := func(context.Context) (clonable, error) { return clonable{Name: "a", Body: []byte("abc")}, nil }
			for range 2 {
				v, err := nearHit(t, ctx, c, k, time.Minute, load)
				if err != nil || string(v.Body) != "abc" {
					return fmt.Errorf("got %+v %v", v, err)
				}
				v.Body[0] = 'X' // the caller's own memory
			}
			return nil
		}},
		{"decode", func() error {
			k := nearPrefix + "blob"
			load := func(context.Context) (blob, error) { return blob{Tags: []string{"a", "b"}}, nil }
			for range 2 {
				v, err := nearHit(t, ctx, c, k, time.Minute, load)
				if err != nil || len(v.Tags) != 2 || v.Tags[0] != "a" {
					return fmt.Errorf("got %+v %v", v, err)
				}
				v.Tags[0] = "X"
			}
			return nil
		}},
		{"not found", func() error {
			k := nearPrefix + "missing"
			for range 2 {
				if _, err := nearHit(t, ctx, c, k, time.Minute, func(context.Context) (row, error) { return row{}, ErrNotFound }); !errors.Is(err, ErrNotFound) {
					return fmt.Errorf("got %v, want ErrNotFound", err)
				}
			}
			return nil
		}},
	} {
		before := c.Stats().NearHits
		if err := tc.run(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := c.Stats().NearHits - before; got != 2 {
			t.Fatalf("%s: %d near hits, want 2", tc.name, got)
		}
	}
	// Keys outside the prefix, and NoNear and SkipRedis calls, never use it.
	before := c.Stats()
	for range 3 {
		if _, err := Fetch(ctx, c, "other", time.Minute, func(context.Context) (row, error) { return sampleRow(2), nil }); err != nil {
			t.Fatal(err)
		}
		for _, o := range []FetchOptions{{TTL: time.Minute, NoNear: true}, {TTL: time.Minute, SkipRedis: true}} {
			if _, err := FetchWith(ctx, c, key, o, func(context.Context) (row, error) { return sampleRow(1), nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
	if after := c.Stats(); after.NearHits != before.NearHits || after.NearMisses != before.NearMisses {
		t.Fatalf("near tier used outside its keys: before %+v after %+v", before, after)
	}
}

// A change in one process reaches the other's near tier by tracking; the
// writer's own copy is dropped before its Delete returns; a change made
// outside the library (redis-cli) is seen too.
func TestNearInvalidationReachesEveryProcess(t *testing.T) {
	t.Parallel()
	prefix := testsvc.Prefix(t)
	a := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})
	b := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})
	hb := &nearHooks{invalidated: make(chan []string, 64)}
	nearOn(t, a, nil)
	nearOn(t, b, hb)
	ctx := ctxT(t, 20*time.Second)
	key := nearPrefix + "k"
	var version atomic.Int64
	load := func(context.Context) (row, error) { r := sampleRow(1); r.Version = version.Load(); return r, nil }
	warm := func(c *Cache) {
		t.Helper()
		if _, err := nearHit(t, ctx, c, key, time.Minute, load); err != nil {
			t.Fatal(err)
		}
	}
	warm(a)
	warm(b)
	if a.Stats().NearHits == 0 || b.Stats().NearHits == 0 {
		t.Fatalf("not warm: a %+v b %+v", a.Stats(), b.Stats())
	}
	read := func(c *Cache) int64 {
		t.Helper()
		v, err := Fetch(ctx, c, key, time.Minute, load)
		if err != nil {
			t.Fatal(err)
		}
		return v.Version
	}

	version.Store(1)
	caughtUp(t, b, hb.invalidated)
	if err := a.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if got := read(a); got != 1 { // synchronous: no tracking message needed
		t.Fatalf("writer read version %d after its Delete, want 1", got)
	}
	waitInvalidated(t, hb.invalidated, prefix+key)
	if got := read(b); got != 1 {
		t.Fatalf("other process read version %d after the invalidation, want 1", got)
	}
	warm(b)

	// Outside the library: UNLINK from another client.
	version.Store(2)
	raw := testsvc.Redis(t)
	caughtUp(t, b, hb.invalidated)
	if err := raw.Unlink(ctx, prefix+key).Err(); err != nil {
		t.Fatal(err)
	}
	waitInvalidated(t, hb.invalidated, prefix+key)
	if got := read(b); got != 2 {
		t.Fatalf("read version %d after an outside UNLINK, want 2", got)
	}
	// Expiry: a short-lived entry that Redis expires is dropped too.
	k2 := nearPrefix + "short"
	if _, err := nearHit(t, ctx, b, k2, 200*time.Millisecond, load); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, b, hb.invalidated)
	waitInvalidated(t, hb.invalidated, prefix+k2) // Redis's active expiry
	before := b.Stats()
	if _, err := Fetch(ctx, b, k2, 200*time.Millisecond, load); err != nil {
		t.Fatal(err)
	}
	if after := b.Stats(); after.NearHits != before.NearHits {
		t.Fatalf("a near copy outlived its expired entry: %+v", after)
	}
}

// heldReads is a go-redis hook that, while armed, holds the reply of the
// near tier's read (the script that also reads PTTL) until released: the command has
// run on Redis, its reply is not yet seen by the Cache.
type heldReads struct {
	armed   atomic.Bool
	replied chan struct{}
	release chan struct{}
}

func (h *heldReads) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *heldReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.hold([]redis.Cmder{cmd})
		return err
	}
}

func (h *heldReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.hold(cmds)
		return err
	}
}

// hold holds the reply of a near read among cmds, once armed.
func (h *heldReads) hold(cmds []redis.Cmder) {
	isNearRead := func(c redis.Cmder) bool {
		a := c.Args()
		return len(a) > 1 && (a[0] == "evalsha" && a[1] == nearReadScript.Hash() || a[0] == "eval" && a[1] == nearReadSource)
	}
	if slices.ContainsFunc(cmds, isNearRead) && h.armed.CompareAndSwap(true, false) {
		h.replied <- struct{}{}
		<-h.release
	}
}

// The race that makes near caches lie: a read's reply carries the old
// value, and the invalidation of the change that replaced it is received
// before the reply is processed. The copy must not be stored.
func TestNearRefusesAReadRacedByAnInvalidation(t *testing.T) {
	t.Parallel()
	prefix := testsvc.Prefix(t)
	a := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})
	rb := testsvc.Redis(t)
	held := &heldReads{replied: make(chan struct{}), release: make(chan struct{})}
	rb.AddHook(held)
	b := cacheOn(t, rb, &Config{Prefix: prefix, OpTimeout: 10 * time.Second})
	hb := &nearHooks{invalidated: make(chan []string, 64)}
	nearOn(t, b, hb)
	ctx := ctxT(t, 30*time.Second)
	key := nearPrefix + "raced"
	var version atomic.Int64
	load := func(context.Context) (row, error) { r := sampleRow(1); r.Version = version.Load(); return r, nil }
	if _, err := Fetch(ctx, a, key, time.Minute, load); err != nil { // Redis holds version 0
		t.Fatal(err)
	}

	caughtUp(t, b, hb.invalidated) // a's lease and fill are old news
	held.armed.Store(true)
	got := make(chan row, 1)
	go func() {
		v, err := Fetch(ctx, b, key, time.Minute, load)
		if err != nil {
			t.Error(err)
		}
		got <- v
	}()
	<-held.replied // b's read returned version 0 from Redis; b has not seen it yet
	version.Store(1)
	if err := a.Delete(ctx, key); err != nil { // the write's invalidation
		t.Fatal(err)
	}
	waitInvalidated(t, hb.invalidated, prefix+key) // b's tier received it first
	close(held.release)
	if v := <-got; v.Version != 0 {
		t.Fatalf("the raced read returned version %d, want 0 (its read predates the write)", v.Version)
	}
	st := b.Stats()
	if st.NearStored != 0 || st.NearRejected != 1 {
		t.Fatalf("the raced read's value was stored: %+v", st)
	}
	for range 3 {
		v, err := Fetch(ctx, b, key, time.Minute, load)
		if err != nil || v.Version != 1 {
			t.Fatalf("read after the write: version %d %v, want 1", v.Version, err)
		}
	}
}

// trackerIDs returns the CLIENT IDs of the tier's tracking connections.
func trackerIDs(c *Cache) []int64 {
	var ids []int64
	for _, id := range trackers(c) {
		ids = append(ids, id)
	}
	return ids
}

// trackers returns the CLIENT ID of each master's tracking connection.
func trackers(c *Cache) map[string]int64 {
	n := c.near.Load()
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]int64{}
	for addr, tr := range n.trackers {
		out[addr] = tr.id.Load()
	}
	return out
}

// A killed tracking connection flushes the tier and stops it serving until
// a new one is confirmed: no near hit meanwhile, and a change made while it
// was down is seen.
func TestNearKilledTrackingConnection(t *testing.T) {
	t.Parallel()
	prefix := testsvc.Prefix(t)
	raw := testsvc.Redis(t)
	a := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})
	b := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})
	var subscribes atomic.Int64
	reconnect := releaser(t)
	hb := &nearHooks{serving: make(chan bool, 8), subscribe: func(string) {
		if subscribes.Add(1) > 1 {
			<-reconnect.ch // hold the reconnect until the test has looked
		}
	}}
	nearOn(t, b, hb)
	ctx := ctxT(t, 30*time.Second)
	key := nearPrefix + "killed"
	var version atomic.Int64
	load := func(context.Context) (row, error) { r := sampleRow(1); r.Version = version.Load(); return r, nil }
	if _, err := nearHit(t, ctx, b, key, time.Minute, load); err != nil {
		t.Fatal(err)
	}
	before := b.Stats()
	ids := trackerIDs(b)
	if len(ids) != 1 || ids[0] == 0 {
		t.Fatalf("tracker ids %v", ids)
	}
	if err := raw.Do(ctx, "client", "kill", "id", ids[0]).Err(); err != nil {
		t.Fatal(err)
	}
	if s := <-hb.serving; s {
		t.Fatal("still serving after the kill")
	}
	// While down: a change (its invalidation goes nowhere) is seen at once.
	version.Store(1)
	if err := a.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		v, err := Fetch(ctx, b, key, time.Minute, load)
		if err != nil || v.Version != 1 {
			t.Fatalf("read while tracking is down: version %d %v, want 1", v.Version, err)
		}
	}
	down := b.Stats()
	if down.NearHits != before.NearHits || down.NearServing || down.NearEntries != 0 || down.NearBypasses < 5 || down.NearTrackingDrops != 1 {
		t.Fatalf("near tier served or kept entries while tracking was down: before %+v, down %+v", before, down)
	}
	reconnect.do()
	if s := <-hb.serving; !s {
		t.Fatal("not serving after the reconnect")
	}
	if v, err := nearHit(t, ctx, b, key, time.Minute, load); err != nil || v.Version != 1 {
		t.Fatalf("near read after the reconnect: version %d %v, want 1", v.Version, err)
	}
}

// FLUSHDB (and FLUSHALL) make Redis invalidate everything: the tier
// flushes and keeps serving on the same connection.
func TestNearFlushDB(t *testing.T) {
	t.Parallel()
	srv := testsvc.StartRedis(t)
	b := cacheOn(t, srv.Client(), &Config{Prefix: "ghl:"})
	hb := &nearHooks{invalidated: make(chan []string, 64)}
	nearOn(t, b, hb)
	ctx := ctxT(t, 30*time.Second)
	key := nearPrefix + "flushed"
	var version atomic.Int64
	load := func(context.Context) (row, error) { r := sampleRow(1); r.Version = version.Load(); return r, nil }
	if _, err := nearHit(t, ctx, b, key, time.Minute, load); err != nil {
		t.Fatal(err)
	}
	version.Store(1)
	caughtUp(t, b, hb.invalidated)
	if err := srv.Client().FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	waitInvalidated(t, hb.invalidated, "")
	v, err := Fetch(ctx, b, key, time.Minute, load)
	if err != nil || v.Version != 1 {
		t.Fatalf("read after FLUSHDB: version %d %v, want 1", v.Version, err)
	}
	if st := b.Stats(); st.NearTrackingDrops != 0 || !st.NearServing || st.NearFlushes < 2 {
		t.Fatalf("after FLUSHDB: %+v", st)
	}
}

// A Redis restart (nothing persisted): the tier stops serving when the
// connection drops and serves again only after tracking is confirmed on the
// new server; the old copy is gone.
func TestNearRedisRestart(t *testing.T) {
	t.Parallel()
	srv := testsvc.StartRedis(t)
	b := cacheOn(t, srv.Client(), &Config{Prefix: "ghl:", BreakerCooldown: 100 * time.Millisecond})
	hb := &nearHooks{serving: make(chan bool, 16)}
	nearOn(t, b, hb)
	ctx := ctxT(t, 60*time.Second)
	key := nearPrefix + "restarted"
	var version atomic.Int64
	load := func(context.Context) (row, error) { r := sampleRow(1); r.Version = version.Load(); return r, nil }
	if _, err := nearHit(t, ctx, b, key, time.Minute, load); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if s := <-hb.serving; s {
		t.Fatal("still serving after the kill")
	}
	version.Store(1)
	v, err := Fetch(ctx, b, key, time.Minute, load) // Redis down: the loader answers
	if err != nil || v.Version != 1 {
		t.Fatalf("read while Redis is down: version %d %v, want 1", v.Version, err)
	}
	srv.Restart()
	for s := range hb.serving {
		if s {
			break
		}
	}
	for range 3 {
		v, err := Fetch(ctx, b, key, time.Minute, load)
		if err != nil || v.Version != 1 {
			t.Fatalf("read after the restart: version %d %v, want 1", v.Version, err)
		}
	}
}

// The near tier on a 3-master Cluster: one tracking connection per master;
// a change on any master reaches the other process; a killed tracking
// connection of one master stops the whole tier until it is back.
func TestNearCluster(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-master Redis Cluster")
	}
	cluster := testsvc.StartCluster(t, 3)
	a := New(cluster.Client(), &Config{Prefix: "ghl:", OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = a.Close() })
	b := New(cluster.Client(), &Config{Prefix: "ghl:", OpTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = b.Close() })
	hb := &nearHooks{invalidated: make(chan []string, 1024), serving: make(chan bool, 16)}
	nearOn(t, a, nil)
	nearOn(t, b, hb)
	if ids := trackerIDs(b); len(ids) != 3 {
		t.Fatalf("%d tracking connections, want one per master (3)", len(ids))
	}
	ctx := ctxT(t, 60*time.Second)
	const keys = 30
	var versions [keys]atomic.Int64
	loader := func(i int) func(context.Context) (row, error) {
		return func(context.Context) (row, error) {
			r := sampleRow(int64(i))
			r.Version = versions[i].Load()
			return r, nil
		}
	}
	key := func(i int) string { return fmt.Sprintf("%s{%d}", nearPrefix, i) }
	readAll := func(c *Cache, want int64) {
		t.Helper()
		for i := range keys {
			v, err := Fetch(ctx, c, key(i), time.Minute, loader(i))
			if err != nil || v.Version != want {
				t.Fatalf("%s: version %d %v, want %d", key(i), v.Version, err, want)
			}
		}
	}
	for i := range keys {
		if _, err := nearHit(t, ctx, b, key(i), time.Minute, loader(i)); err != nil {
			t.Fatal(err)
		}
	}
	caughtUp(t, b, hb.invalidated)
	for i := range keys {
		versions[i].Store(1)
		if err := a.Delete(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
		waitInvalidated(t, hb.invalidated, "ghl:"+key(i))
	}
	readAll(b, 1)

	// Kill one master's tracking connection: nothing is served from memory
	// until it is back.
	for len(hb.serving) > 0 { // earlier changes (masters found one by one)
		<-hb.serving
	}
	for addr, id := range trackers(b) {
		node := redis.NewClient(&redis.Options{Addr: addr})
		n, err := node.Do(ctx, "client", "kill", "id", id).Int()
		_ = node.Close()
		if err != nil || n != 1 {
			t.Fatalf("kill %s's tracking connection: %d %v", addr, n, err)
		}
		break
	}
	if s := <-hb.serving; s {
		t.Fatal("still serving after a master's tracking connection was killed")
	}
	for s := range hb.serving {
		if s {
			break
		}
	}
	for i := range keys {
		if v, err := nearHit(t, ctx, b, key(i), time.Minute, loader(i)); err != nil || v.Version != 1 {
			t.Fatalf("%s after the reconnect: version %d %v, want 1", key(i), v.Version, err)
		}
	}
}

// nearStaleness measures, over writes in a and concurrent reads in b, the
// time from each write's return to b's first read of the new value, and
// counts b's reads that returned an older value although they began more
// than bound after the write returned. Reads check themselves as they go
// (nothing is recorded per read).
func nearStaleness(t *testing.T, a, b *Cache, writes int, bound time.Duration) (delays []time.Duration, late int64) {
	t.Helper()
	ctx := ctxT(t, 120*time.Second)
	const keys = 8
	per := writes/keys + 2
	var (
		versions [keys]atomic.Int64          // the source of truth
		returned [keys]atomic.Pointer[write] // each key's latest write that returned
		retAt    [keys][]atomic.Int64        // when the write of each version returned (unix nanos)
		seen     [keys]atomic.Int64          // the newest version b has returned
		lateN    atomic.Int64
		stop     atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex
		failed   atomic.Value
	)
	for i := range keys {
		retAt[i] = make([]atomic.Int64, per)
	}
	key := func(i int) string { return fmt.Sprintf("%s{s%d}", nearPrefix, i) }
	loader := func(i int) func(context.Context) (row, error) {
		return func(context.Context) (row, error) {
			r := sampleRow(int64(i))
			r.Version = versions[i].Load()
			return r, nil
		}
	}
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			var mine []time.Duration
			for !stop.Load() {
				i := rng.IntN(keys)
				w := returned[i].Load()
				start := time.Now()
				v, err := Fetch(ctx, b, key(i), time.Minute, loader(i))
				if err != nil {
					failed.Store(err)
					return
				}
				now := time.Now()
				if w != nil && v.Version < w.version && start.Sub(w.at) >= bound {
					lateN.Add(1)
				}
				for old := seen[i].Load(); v.Version > old; old = seen[i].Load() {
					if seen[i].CompareAndSwap(old, v.Version) {
						for u := old + 1; u <= v.Version; u++ {
							if at := retAt[i][u].Load(); at != 0 {
								mine = append(mine, max(now.Sub(time.Unix(0, at)), 0))
							} else {
								mine = append(mine, 0) // seen before the write returned
							}
						}
						break
					}
				}
			}
			mu.Lock()
			delays = append(delays, mine...)
			mu.Unlock()
		})
	}
	for w := range writes {
		i := w % keys
		ver := versions[i].Add(1)
		if err := a.Delete(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		retAt[i][ver].Store(now.UnixNano())
		returned[i].Store(&write{at: now, version: ver})
		time.Sleep(500 * time.Microsecond) // pacing of the workload, not ordering
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := range keys { // until b has seen every key's last version (or 10 s)
		for seen[i].Load() < versions[i].Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	stop.Store(true)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	slices.Sort(delays)
	return delays, lateN.Load()
}

// write is one write of nearStaleness: its version and when it returned.
type write struct {
	at      time.Time
	version int64
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, int(float64(len(ds))*q))]
}

// Two instances, standalone and Cluster. By default a write of a near key
// returns only when no other process can still serve the old value: no read
// that begins after it returned sees the old value. With NoWriteWait, the
// window is measured (the time from a write returning in one instance to the
// other's first read of the new value) and bounded: no read that begins
// more than 50 ms after the write returned sees the old value.
func TestNearStalenessBound(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, a, b *Cache, bound time.Duration) {
		nearOn(t, a, nil)
		nearOn(t, b, nil)
		delays, late := nearStaleness(t, a, b, 1000, bound)
		st := b.Stats()
		t.Logf("%d writes (%d waited): first fresh read after p50 %v, p99 %v, max %v; near hits %d, bypasses %d, stored %d, rejected %d",
			len(delays), a.Stats().NearWriteWaits, quantile(delays, 0.5), quantile(delays, 0.99), quantile(delays, 1),
			st.NearHits, st.NearBypasses, st.NearStored, st.NearRejected)
		if late != 0 {
			t.Fatalf("%d reads returned the old value more than %v after the write returned", late, bound)
		}
		if len(delays) < 1000 || st.NearHits == 0 {
			t.Fatalf("only %d writes measured, %d near hits", len(delays), st.NearHits)
		}
	}
	for _, tc := range []struct {
		name   string
		noWait bool
		bound  time.Duration
	}{{"wait", false, 0}, {"no-wait", true, 50 * time.Millisecond}} {
		near := NearConfig{NoWriteWait: tc.noWait}
		t.Run("standalone/"+tc.name, func(t *testing.T) {
			t.Parallel()
			prefix := testsvc.Prefix(t)
			run(t, cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix, Near: near}),
				cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix, Near: near}), tc.bound)
		})
		t.Run("cluster/"+tc.name, func(t *testing.T) {
			t.Parallel()
			if testing.Short() {
				t.Skip("starts a 3-master Redis Cluster")
			}
			cluster := testsvc.StartCluster(t, 3)
			a := New(cluster.Client(), &Config{Prefix: "ghl:", OpTimeout: 2 * time.Second, Near: near})
			t.Cleanup(func() { _ = a.Close() })
			b := New(cluster.Client(), &Config{Prefix: "ghl:", OpTimeout: 2 * time.Second, Near: near})
			t.Cleanup(func() { _ = b.Close() })
			run(t, a, b, tc.bound)
		})
	}
}

// failingClient is a go-redis hook that fails every command (as a
// connection error would) while armed, without sending it.
type failingClient struct{ armed atomic.Bool }

var errInjected = errors.New("injected: connection reset")

func (f *failingClient) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f *failingClient) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if f.armed.Load() {
			cmd.SetErr(errInjected)
			return errInjected
		}
		return next(ctx, cmd)
	}
}
func (f *failingClient) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if f.armed.Load() {
			for _, c := range cmds {
				c.SetErr(errInjected)
			}
			return errInjected
		}
		return next(ctx, cmds)
	}
}

// While the breaker is open the near tier serves nothing (its tracking
// connection is fine: only the cache's own client fails), and it serves
// again, flushed, once the breaker has closed.
func TestNearBypassedWhileBreakerOpen(t *testing.T) {
	t.Parallel()
	rdb := testsvc.Redis(t)
	fail := &failingClient{}
	rdb.AddHook(fail)
	b := cacheOn(t, rdb, &Config{BreakerFailures: 1, BreakerCooldown: 50 * time.Millisecond})
	hb := &nearHooks{serving: make(chan bool, 16)}
	nearOn(t, b, hb)
	ctx := ctxT(t, 30*time.Second)
	key := nearPrefix + "breaker"
	var version atomic.Int64
	load := func(context.Context) (row, error) { r := sampleRow(1); r.Version = version.Load(); return r, nil }
	if _, err := nearHit(t, ctx, b, key, time.Minute, load); err != nil {
		t.Fatal(err)
	}
	fail.armed.Store(true)
	// As if a write happened whose delete this process could not send; the
	// next read fails over to the loader and opens the breaker.
	version.Store(1)
	if _, err := Fetch(ctx, b, nearPrefix+"other", time.Minute, load); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-hb.serving:
		if s {
			t.Fatal("serving changed to serving with the breaker open")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still serving 10 s after the breaker opened: %+v", b.Stats())
	}
	before := b.Stats()
	for range 5 {
		v, err := Fetch(ctx, b, key, time.Minute, load)
		if err != nil || v.Version != 1 {
			t.Fatalf("read with the breaker open: version %d %v, want 1 (from the loader)", v.Version, err)
		}
	}
	if st := b.Stats(); st.NearHits != before.NearHits || st.NearEntries != 0 || !st.BreakerOpen {
		t.Fatalf("near tier used with the breaker open: %+v", st)
	}
	fail.armed.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for serving := false; !serving; { // the half-open probe of some read closes the breaker
		_, _ = Fetch(ctx, b, nearPrefix+"other", time.Minute, load)
		select {
		case serving = <-hb.serving:
		case <-time.After(20 * time.Millisecond): // the next read may probe
		}
		if time.Now().After(deadline) {
			t.Fatalf("near tier not serving 10 s after Redis came back: %+v", b.Stats())
		}
	}
}
