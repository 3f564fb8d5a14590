package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// pipelineLog is a go-redis hook that records the length of every pipeline
// and counts the commands sent on their own.
type pipelineLog struct {
	mu     sync.Mutex
	single map[string]int
	piped  []int
	names  []string
}

func (h *pipelineLog) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *pipelineLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		if h.single == nil {
			h.single = map[string]int{}
		}
		h.single[cmd.Name()]++
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (h *pipelineLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if cmds[0].Name() == "client" || cmds[0].Name() == "hello" {
			return next(ctx, cmds) // a new connection's setup
		}
		h.mu.Lock()
		h.piped = append(h.piped, len(cmds))
		for _, c := range cmds {
			h.names = append(h.names, c.Name())
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (h *pipelineLog) counts() (map[string]int, []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.single), slices.Clone(h.piped)
}

// TestBusyReadsArePipelined: with every read slot taken (ReadsInFlight 1,
// the one read held), the reads that arrive wait, and when the slot frees
// they go out in one pipeline with one command per key: hits answered from
// it, and two readers of an empty key sharing the one lease and load.
func TestBusyReadsArePipelined(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	h := &heldReadClient{Client: testsvc.Redis(t), entered: make(chan struct{}), release: make(chan struct{})}
	log := &pipelineLog{}
	h.AddHook(log)
	c := cacheOn(t, h, &Config{ReadsInFlight: 1})
	const keys = 10
	for i := range keys {
		if err := c.Set(ctx, "k"+strconv.Itoa(i), sampleRow(int64(i)), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	setsBefore, _ := log.counts()
	queued := make(chan string, 4*keys)
	c.hookQueued = func(full string) { queued <- full }
	loads := &counter{}
	load := func(context.Context) (row, error) { loads.inc(); return sampleRow(99), nil }

	first := fetchAsync(ctx, t, c, "k0", load)
	<-h.entered // the one slot is taken: everything after this waits

	results := make(chan error, 2*keys+2)
	read := func(key string, want row) {
		v, err := Fetch(ctx, c, key, time.Minute, load)
		if err == nil && v != want {
			err = fmt.Errorf("%s: got %+v, want %+v", key, v, want)
		}
		results <- err
	}
	for i := range keys {
		go read("k"+strconv.Itoa(i), sampleRow(int64(i)))
		go read("k"+strconv.Itoa(i), sampleRow(int64(i)))
	}
	go read("empty", sampleRow(99))
	go read("empty", sampleRow(99))
	for range 2*keys + 2 {
		<-queued
	}
	close(h.release)
	<-first
	for range 2*keys + 2 {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	single, piped := log.counts()
	if single["set"]-setsBefore["set"] != 1 || !slices.Equal(piped, []int{keys + 1}) {
		t.Fatalf("reads sent on their own %d, pipelines %v %v; want 1 and one pipeline of %d (one command per key)",
			single["set"]-setsBefore["set"], piped, log.names, keys+1)
	}
	if st := c.Stats(); st.Hits != 2*keys+1 || st.Misses != 2 || st.Loads != 1 || loads.get() != 1 {
		t.Fatalf("stats %+v, %d loads; want %d hits and both readers of the empty key on one load", st, loads.get(), 2*keys+1)
	}
	// The slot is free again: a read goes out on its own at once.
	if v, err := Fetch(ctx, c, "empty", time.Minute, load); err != nil || v != sampleRow(99) {
		t.Fatalf("got %+v, %v", v, err)
	}
}

// heldSlot returns a cache with one read slot (ReadsInFlight 1) on a
// client that logs its commands, whose slot is taken by a read of the key
// "held" (a hit, nothing to fill) until release is called; done delivers
// that read's value.
func heldSlot(ctx context.Context, t *testing.T, cfg Config) (c *Cache, log *pipelineLog, release func(), done <-chan row) {
	t.Helper()
	h := &heldReadClient{Client: testsvc.Redis(t), entered: make(chan struct{}), release: make(chan struct{})}
	log = &pipelineLog{}
	h.AddHook(log)
	cfg.Prefix, cfg.ReadsInFlight = testsvc.Prefix(t), 1
	c = New(h, &cfg)
	if err := c.Set(ctx, "held", sampleRow(7), time.Minute); err != nil {
		t.Fatal(err)
	}
	done = fetchAsync(ctx, t, c, "held", func(context.Context) (row, error) { return sampleRow(7), nil })
	<-h.entered
	return c, log, func() { close(h.release) }, done
}

// TestQueuedReadKeepsItsOpTimeout: a read waiting for a slot behind a read
// that never returns gives up at its OpTimeout and is served by its loader
// (a fallback), without waiting for the held read; it was never sent, so no
// lease release follows it.
func TestQueuedReadKeepsItsOpTimeout(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	c, log, release, first := heldSlot(ctx, t, Config{OpTimeout: 50 * time.Millisecond, BreakerFailures: 100})
	load := func(context.Context) (row, error) { return sampleRow(7), nil }
	queued := make(chan string, 1)
	c.hookQueued = func(full string) { queued <- full }
	v, err := Fetch(ctx, c, "other", time.Minute, load) // returns while the first is still held
	if err != nil || v != sampleRow(7) {
		t.Fatalf("got %+v, %v", v, err)
	}
	if full := <-queued; full != c.FullKey("other") {
		t.Fatalf("queued %q", full)
	}
	st := c.Stats()
	release()
	<-first
	if st.Fallbacks != 1 || st.Loads != 1 {
		t.Fatalf("stats %+v, want the queued read served by one fallback load", st)
	}
	if err := c.Close(); err != nil { // waits for background lease releases
		t.Fatal(err)
	}
	single, piped := log.counts()
	if single["evalsha"]+single["eval"] != 0 || len(piped) != 0 {
		t.Fatalf("commands %v, pipelines %v: a read that was never sent released a lease", single, piped)
	}
}

// TestQueuedReadLeavesWithItsCaller: a read waiting for a slot returns as
// soon as its caller's context is cancelled — long before its OpTimeout —
// with the caller's error, and, never sent, releases no lease.
func TestQueuedReadLeavesWithItsCaller(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	c, log, release, first := heldSlot(ctx, t, Config{OpTimeout: time.Minute})
	load := func(context.Context) (row, error) { return sampleRow(7), nil }
	cctx, cancel := context.WithCancel(ctx)
	c.hookQueued = func(string) { cancel() }
	if _, err := Fetch(cctx, c, "other", time.Minute, load); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the caller's context.Canceled while the slot is still held", err)
	}
	release()
	<-first
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if single, piped := log.counts(); single["evalsha"]+single["eval"] != 0 || len(piped) != 0 {
		t.Fatalf("commands %v, pipelines %v: a read that was never sent released a lease", single, piped)
	}
	if st := c.Stats(); st.RedisErrors != 0 {
		t.Fatalf("stats %+v: a caller leaving is no Redis failure", st)
	}
}

// holdReadsOf is a client whose Fetch reads of one key are held (executed,
// then answered only once release is closed).
type holdReadsOf struct {
	*redis.Client
	key     string
	entered chan struct{} // one signal per held read
	release chan struct{}
}

func (h *holdReadsOf) Process(ctx context.Context, cmd redis.Cmder) error {
	err := h.Client.Process(ctx, cmd)
	if args := cmd.Args(); cmd.Name() == "set" && len(args) > 1 && isStringPtr(args[1], h.key) {
		h.entered <- struct{}{}
		<-h.release
	}
	return err
}

// TestBusyFillWaitsForASlot: a fill issued while every slot is taken waits
// in the queue like a read, is sent when a slot frees, and stores the value.
func TestBusyFillWaitsForASlot(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	prefix := testsvc.Prefix(t)
	h := &holdReadsOf{Client: testsvc.Redis(t), key: prefix + "held", entered: make(chan struct{}, 4), release: make(chan struct{})}
	c := cacheOn(t, h, &Config{Prefix: prefix, ReadsInFlight: 2})
	if err := c.Set(ctx, "held", sampleRow(1), time.Minute); err != nil {
		t.Fatal(err)
	}
	queued := make(chan string, 8)
	c.hookQueued = func(full string) { queued <- full }
	first := fetchAsync(ctx, t, c, "held", func(context.Context) (row, error) { return sampleRow(1), nil })
	<-h.entered // slot 1 taken
	var second <-chan row
	v, err := Fetch(ctx, c, "empty", time.Minute, func(context.Context) (row, error) {
		// The read of "empty" took slot 2 and its lease; before the fill,
		// another held read takes slot 2 again.
		second = fetchAsync(ctx, t, c, "held", func(context.Context) (row, error) { return sampleRow(1), nil })
		<-h.entered
		go func() {
			if full := <-queued; full != c.FullKey("empty") {
				t.Errorf("queued %q, want the fill of empty", full)
			}
			close(h.release) // the fill waits in the queue: free the slots
		}()
		return sampleRow(2), nil
	})
	if err != nil || v != sampleRow(2) {
		t.Fatalf("got %+v, %v", v, err)
	}
	<-first
	<-second
	requireHolds(ctx, t, c, "empty", sampleRow(2), "the queued fill stored the value")
	if st := c.Stats(); st.RedisErrors != 0 || st.Loads != 1 {
		t.Fatalf("stats %+v", st)
	}
}
