package cachelayer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// heldReadClient is a real client whose first Fetch read (SET NX GET) is
// executed at once (so it reads the value of that moment) but answered only
// when release is closed; it counts the reads.
type heldReadClient struct {
	*redis.Client
	reads   atomic.Int64
	held    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (h *heldReadClient) Process(ctx context.Context, cmd redis.Cmder) error {
	if cmd.Name() != "set" {
		return h.Client.Process(ctx, cmd)
	}
	h.reads.Add(1)
	err := h.Client.Process(ctx, cmd)
	if !h.held.Swap(true) {
		close(h.entered)
		<-h.release
	}
	return err
}

// TestReadsNeverShareAnOlderReply: readers that begin while another
// reader's read is held in flight are not held behind it and never get its
// (older) reply: a value written after the held read was sent reaches them
// at once — whether each sends a read of its own (ReadsInFlight < 0) or
// they wait for a free slot and are pipelined together (the default: the
// held read fills one of the two slots).
func TestReadsNeverShareAnOlderReply(t *testing.T) {
	t.Parallel()
	for _, inFlight := range []int{-1, 2} {
		t.Run(fmt.Sprintf("ReadsInFlight=%d", inFlight), func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t, 20*time.Second)
			h := &heldReadClient{Client: testsvc.Redis(t), entered: make(chan struct{}), release: make(chan struct{})}
			sets := &commandCounter{name: "set"}
			h.AddHook(sets)
			c := cacheOn(t, h, &Config{ReadsInFlight: inFlight})
			if err := c.Set(ctx, "k", sampleRow(1), time.Minute); err != nil {
				t.Fatal(err)
			}
			load := func(context.Context) (row, error) { t.Error("unexpected load"); return row{}, nil }

			first := fetchAsync(ctx, t, c, "k", load)
			<-h.entered // the first read has read row 1 and is held

			// A write lands after that read was sent...
			if err := c.Set(ctx, "k", sampleRow(2), time.Minute); err != nil {
				t.Fatal(err)
			}
			before := sets.n.Load()
			// ...and readers that begin now see it, while the first is still held.
			const n = 50
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					v, err := Fetch(ctx, c, "k", time.Minute, load)
					if err != nil || v != sampleRow(2) {
						t.Errorf("reader %d got %+v, %v; want row 2 written before it began", i, v, err)
					}
				})
			}
			wg.Wait()
			close(h.release)
			if v := <-first; v != sampleRow(1) {
				t.Fatalf("first reader got %+v; it began before the write, so row 1 is its answer", v)
			}
			got := sets.n.Load() - before
			if inFlight < 0 && got != n {
				t.Fatalf("%d reads for %d Fetch calls, want one each", got, n)
			}
			if inFlight > 0 && (got < 1 || got > n) {
				t.Fatalf("%d reads for %d Fetch calls, want 1 to %d", got, n, n)
			}
			if st := c.Stats(); st.Hits != 1+n || st.Loads != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// commandCounter is a go-redis hook that counts the commands named name,
// sent on their own or in pipelines.
type commandCounter struct {
	name string
	n    atomic.Int64
}

func (h *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == h.name {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if cmd.Name() == h.name {
				h.n.Add(1)
			}
		}
		return next(ctx, cmds)
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
