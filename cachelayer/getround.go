package cachelayer

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"
)

// getRounds coalesces the hit path's GETs of one key in one process without
// weakening freshness: a caller never shares a reply to a GET that was sent
// before it arrived. While a GET of a key is in flight, callers that arrive
// gather in the key's next round, which is sent (once, for all of them) when
// the one in flight returns. A reply therefore reflects Redis at some moment
// after each of its callers began — so a read that begins after an
// invalidation completed cannot be answered from before it — while a hot
// key costs at most one GET in flight per process instead of one per reader.
//
// With no contention a caller sends its own GET, as without rounds.
type getRounds struct {
	seed   maphash.Seed
	shards [64]roundShard
}

type roundShard struct {
	mu   sync.Mutex             // guards keys and every roundState in it
	keys map[string]*roundState // full keys with a GET in flight
}

// roundState is a key's GET in flight and the round gathering behind it.
type roundState struct {
	inflight chan struct{} // closed when the GET in flight has returned
	next     *round        // callers that arrived while it was in flight; nil if none
}

// round is one GET and what it returned, published by closing done.
type round struct {
	done chan struct{}
	val  string
	err  error // already through Cache.outcome
}

func newGetRounds() *getRounds { return &getRounds{seed: maphash.MakeSeed()} }

func (g *getRounds) shard(full string) *roundShard {
	return &g.shards[maphash.String(g.seed, full)%uint64(len(g.shards))]
}

// get returns the value of full and the error of its GET (through
// Cache.outcome: redis.Nil, an error that Is ErrUnavailable, an error reply,
// or ctx's error). ctx bounds the caller's wait, and so does OpTimeout from
// the caller's arrival, whether it sends its own GET or waits for a round.
func (g *getRounds) get(ctx context.Context, c *Cache, full string) (string, error) {
	sh := g.shard(full)
	sh.mu.Lock()
	if sh.keys == nil {
		sh.keys = make(map[string]*roundState)
	}
	st, busy := sh.keys[full]
	if !busy {
		// Nothing in flight: send our own GET, bounded by our ctx.
		st = &roundState{inflight: make(chan struct{})}
		sh.keys[full] = st
		sh.mu.Unlock()
		val, err := c.getOnce(ctx, full)
		g.finish(sh, full, st)
		return val, err
	}
	r := st.next
	if r == nil {
		// The first to wait starts the next round, sent when the GET in
		// flight finishes; Close waits for it.
		if !c.enter() {
			sh.mu.Unlock()
			return c.getOnce(ctx, full)
		}
		r = &round{done: make(chan struct{})}
		st.next = r
		go g.sendNext(c, sh, full, st, r)
	}
	sh.mu.Unlock()
	// Wait at most OpTimeout from our own arrival, as for a GET of our own:
	// the round's GET starts only when the one in flight returns, which
	// with a hung Redis is OpTimeout away already.
	t := time.NewTimer(c.cfg.OpTimeout)
	defer t.Stop()
	select {
	case <-r.done:
		return r.val, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	case <-t.C:
		// Not a Redis call of ours: the round's GET reports to the breaker.
		return "", errRoundTimeout
	}
}

// errRoundTimeout is what a caller gets that waited OpTimeout for its
// round's GET; the read falls back to its loader.
var errRoundTimeout = fmt.Errorf("%w: waited OpTimeout for a shared GET", ErrUnavailable)

// finish ends the GET in flight of full: the key leaves the table unless a
// round is waiting to go next (its sender goroutine takes over).
func (g *getRounds) finish(sh *roundShard, full string, st *roundState) {
	sh.mu.Lock()
	if st.next == nil {
		delete(sh.keys, full)
	}
	sh.mu.Unlock()
	close(st.inflight)
}

// sendNext waits for the GET in flight of full to finish, then sends r's GET,
// detached from its callers (each waits on its own context), bounded by
// OpTimeout.
func (g *getRounds) sendNext(c *Cache, sh *roundShard, full string, st *roundState, r *round) {
	defer c.wg.Done()
	<-st.inflight
	sh.mu.Lock()
	// From here on, callers that arrive gather in a new round.
	next := &roundState{inflight: make(chan struct{})}
	sh.keys[full] = next
	sh.mu.Unlock()
	r.val, r.err = c.getOnce(context.Background(), full)
	close(r.done)
	g.finish(sh, full, next)
}
