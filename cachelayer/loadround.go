package cachelayer

import (
	"sync"

	"golang.org/x/sync/singleflight"
)

// loadRounds coalesces the loads of SkipRedis reads of one key in one
// process without ever answering a caller with a load that began before it
// arrived: while a load of a key runs, callers that arrive gather for the
// next one, which starts (once, for all of them) when the running one
// returns. So a burst of reads costs at most two loads, and each answer
// reflects the source at some moment after each of its callers began —
// what read-your-writes of a pending invalidation needs. (singleflight would
// let late callers join a load already under way, whose answer may predate
// a write they must see.)
type loadRounds struct {
	mu   sync.Mutex            // guards keys and every loadRound in it
	keys map[string]*roundPair // keys with a load running
}

type roundPair struct {
	running *loadRound // the load under way
	next    *loadRound // callers waiting for the next load; nil if none
}

// loadRound is one load and the callers it answers.
type loadRound struct {
	fn    func() any
	chans []chan singleflight.Result
}

// join adds a caller to the current round of key — a new load if none
// runs, else the next one — and returns the channel its answer arrives on
// and whether the caller started that round (its leader). fn is the load
// the round runs if this caller starts it; it runs on a goroutine of its
// own, detached from the callers.
func (g *loadRounds) join(key string, fn func() any) (<-chan singleflight.Result, bool) {
	ch := make(chan singleflight.Result, 1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.keys == nil {
		g.keys = make(map[string]*roundPair)
	}
	p := g.keys[key]
	if p == nil {
		r := &loadRound{fn: fn, chans: []chan singleflight.Result{ch}}
		g.keys[key] = &roundPair{running: r}
		go g.run(key, r)
		return ch, true
	}
	if p.next == nil {
		p.next = &loadRound{fn: fn, chans: []chan singleflight.Result{ch}}
		return ch, true
	}
	p.next.chans = append(p.next.chans, ch)
	return ch, false
}

// run runs r's load, answers its callers, then starts the round that
// gathered meanwhile, if any.
func (g *loadRounds) run(key string, r *loadRound) {
	for r != nil {
		v := r.fn()
		g.mu.Lock()
		for _, ch := range r.chans {
			ch <- singleflight.Result{Val: v}
		}
		p := g.keys[key]
		r, p.running, p.next = p.next, p.next, nil
		if r == nil {
			delete(g.keys, key)
		}
		g.mu.Unlock()
	}
}
