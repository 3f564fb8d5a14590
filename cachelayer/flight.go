package cachelayer

import "sync"

// flightGroup runs at most one joinable flight per full key, like
// golang.org/x/sync/singleflight, with one difference: a caller whose own
// read took a fresh lease on the key leads a new flight (lead), even while
// an older flight of the key runs. The older one keeps answering its own
// callers; it can no longer fill (its lease is gone, which is how the
// caller's read could take one), and later callers join the new flight.
// Callers wait on the flight's done channel; no goroutine or channel is made
// per caller.
type flightGroup struct {
	mu sync.Mutex         // guards m
	m  map[string]*flight // the joinable flight of each key
}

// flight is one run of a flight function; res is written before done is
// closed and only read after.
type flight struct {
	done     chan struct{}
	replaced chan struct{} // closed when lead makes a newer flight of the key the joinable one
	res      any
}

// join returns the joinable flight of key, starting one that runs fn on a
// goroutine of its own if there is none; started reports whether it did.
func (g *flightGroup) join(key string, fn func(*flight) any) (f *flight, started bool) {
	g.mu.Lock()
	if f = g.m[key]; f != nil {
		g.mu.Unlock()
		return f, false
	}
	f = g.startLocked(key, fn)
	g.mu.Unlock()
	return f, true
}

// lead starts a new flight of key that runs fn and makes it the one later
// callers join; the flight it replaces (if any) learns so through its
// replaced channel.
func (g *flightGroup) lead(key string, fn func(*flight) any) *flight {
	g.mu.Lock()
	if old := g.m[key]; old != nil {
		close(old.replaced)
	}
	f := g.startLocked(key, fn)
	g.mu.Unlock()
	return f
}

func (g *flightGroup) startLocked(key string, fn func(*flight) any) *flight {
	if g.m == nil {
		g.m = make(map[string]*flight)
	}
	f := &flight{done: make(chan struct{}), replaced: make(chan struct{})}
	g.m[key] = f
	go func() {
		f.res = fn(f)
		g.mu.Lock()
		if g.m[key] == f {
			delete(g.m, key)
		}
		g.mu.Unlock()
		close(f.done)
	}()
	return f
}

// Forget makes the current flight of key unjoinable: later callers start a
// new one. The flight still answers the callers it has.
func (g *flightGroup) Forget(key string) {
	g.mu.Lock()
	delete(g.m, key)
	g.mu.Unlock()
}
