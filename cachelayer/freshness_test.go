package cachelayer

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// heldGetClient is a real client whose first GET is executed at once (so it
// reads the value of that moment) but answered only when release is closed.
type heldGetClient struct {
	*redis.Client
	gets    atomic.Int64
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (h *heldGetClient) Get(ctx context.Context, key string) *redis.StringCmd {
	h.gets.Add(1)
	cmd := h.Client.Get(ctx, key)
	h.once.Do(func() {
		close(h.entered)
		<-h.release
	})
	return cmd
}

// TestGetRoundsNeverShareAnOlderReply: callers that arrive while a GET is in
// flight share one later GET, never the reply of the one in flight, so a
// value written after that GET was sent reaches them.
func TestGetRoundsNeverShareAnOlderReply(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	h := &heldGetClient{Client: testsvc.Redis(t), entered: make(chan struct{}), release: make(chan struct{})}
	c := cacheOn(t, h, nil)
	if err := c.Set(ctx, "k", sampleRow(1), time.Minute); err != nil {
		t.Fatal(err)
	}
	load := func(context.Context) (row, error) { t.Error("unexpected load"); return row{}, nil }

	first := fetchAsync(ctx, t, c, "k", load)
	<-h.entered // the first GET has read row 1 and is held

	// A write lands after that GET was sent...
	if err := c.Set(ctx, "k", sampleRow(2), time.Minute); err != nil {
		t.Fatal(err)
	}
	// ...and readers that begin now must see it.
	const n = 50
	var wg sync.WaitGroup
	var joined sync.WaitGroup
	joined.Add(n)
	results := make([]row, n)
	for i := range n {
		wg.Go(func() {
			joined.Done()
			v, err := Fetch(ctx, c, "k", time.Minute, load)
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		})
	}
	joined.Wait()
	waitFor(t, 10*time.Second, "readers gathered behind the held GET", func() bool {
		sh := c.rounds.shard(c.FullKey("k"))
		sh.mu.Lock()
		defer sh.mu.Unlock()
		st := sh.keys[c.FullKey("k")]
		return st != nil && st.next != nil
	})
	close(h.release)
	wg.Wait()

	if v := <-first; v != sampleRow(1) {
		t.Fatalf("first reader got %+v; it began before the write, so row 1 is its answer", v)
	}
	for i, v := range results {
		if v != sampleRow(2) {
			t.Fatalf("reader %d got %+v, want row 2 written before it began", i, v)
		}
	}
	if got := h.gets.Load(); got > 1+n {
		t.Fatalf("%d GETs", got)
	}
	t.Logf("%d readers arriving during a held GET were answered by %d more GET(s)", n, h.gets.Load()-1)
}

// TestGetRoundsCoalesceHotKey: many readers of one hot key send far fewer
// GETs than reads, and every read gets the value.
func TestGetRoundsCoalesceHotKey(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	h := &heldGetClient{Client: testsvc.Redis(t), entered: make(chan struct{}), release: make(chan struct{})}
	close(h.release)
	c := cacheOn(t, h, &Config{OpTimeout: 2 * time.Second})
	if err := c.Set(ctx, "hot", sampleRow(3), time.Minute); err != nil {
		t.Fatal(err)
	}
	const readers, each = 32, 50
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for range each {
				v, err := Fetch(ctx, c, "hot", time.Minute, func(context.Context) (row, error) { return row{}, nil })
				if err != nil || v != sampleRow(3) {
					t.Errorf("%+v %v", v, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if st := c.Stats(); st.Hits != readers*each || st.Loads != 0 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%d reads of one key: %d GETs", readers*each, h.gets.Load())
	if h.gets.Load() >= readers*each {
		t.Fatalf("no coalescing: %d GETs for %d reads", h.gets.Load(), readers*each)
	}
}

// TestJoinedFlightMustBeFresh: a flight of process B has filled the old
// value but not yet answered when process A invalidates the key; a read on B
// that begins after the invalidation finds the key empty and joins that
// flight. It must not take the flight's old value: it starts over and gets
// the new one.
func TestJoinedFlightMustBeFresh(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t, 20*time.Second)
	prefix := testsvc.Prefix(t)
	a := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})
	b := cacheOn(t, testsvc.Redis(t), &Config{Prefix: prefix})

	filled, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b.hookFilled = func(string) {
		once.Do(func() {
			close(filled)
			<-release
		})
	}
	joined := make(chan struct{}, 4)
	b.hookJoined = func(string) { joined <- struct{}{} }

	var current atomic.Int64
	current.Store(1)
	load := func(context.Context) (row, error) { return sampleRow(current.Load()), nil }

	leader := fetchAsync(ctx, t, b, "k", load)
	<-joined
	<-filled // B's flight stored row 1 and has not answered yet

	current.Store(2)                           // the write commits...
	if err := a.Delete(ctx, "k"); err != nil { // ...and another process invalidates
		t.Fatal(err)
	}
	late := fetchAsync(ctx, t, b, "k", load)
	<-joined // the late reader found the key empty and joined the old flight
	close(release)

	if v := <-leader; v != sampleRow(1) {
		t.Fatalf("leader got %+v; it began before the invalidation, row 1 is its answer", v)
	}
	if v := <-late; v != sampleRow(2) {
		t.Fatalf("a read that began after the invalidation got %+v, want row 2", v)
	}
}
