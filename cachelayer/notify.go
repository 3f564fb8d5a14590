package cachelayer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// fillNotifier tells flights that wait for another process's lease when
// that lease is filled (or released), instead of their polling Redis.
//
// A waiting flight registers for its key, makes sure the Cache's one
// subscription is confirmed, and marks the lease in the key as "has
// waiters" (one compare-and-set; see stepScript). A filler whose fill (or
// release) script finds its lease marked PUBLISHes the key on the channel of
// the Cache's Prefix, in the same script, so no fill pays a round trip for
// it and unwaited fills publish nothing. The subscription is started lazily
// by the first wait and lives until Close; go-redis resubscribes after a
// reconnect. A message lost meanwhile costs the waiter a slow re-check
// (leaseRecheck), never freshness: a notification only wakes the waiter,
// which then reads the key.
//
// Plain PUBLISH reaches the subscribers of every node of a Redis Cluster,
// so one subscription on any node serves every slot.
type fillNotifier struct {
	channel string

	subMu    sync.Mutex    // serialises subscribing and closing; guards ps, closed, failedAt
	ps       *redis.PubSub // the subscription, once confirmed
	closed   bool
	failedAt time.Time   // the last failed attempt: retried at most once per subscribeRetry
	ready    atomic.Bool // ps is subscribed (read without subMu on the wait path)
	loop     sync.WaitGroup

	mu      sync.Mutex                            // guards waiters
	waiters map[string]map[chan struct{}]struct{} // full key → wake channels of its waiting flights
}

// subscribeRetry spaces attempts to subscribe while they fail, so that
// waiters then poll instead of each paying a subscribe round trip.
const subscribeRetry = time.Second

// fillChannel is the channel on which fills of keys under prefix are
// announced (a pub/sub channel, not a key).
func fillChannel(prefix string) string { return "ghlcache:fills:" + prefix }

// ensure subscribes the Cache to its fill channel unless it is already, and
// reports whether notifications can be relied on (else the waiter polls).
func (n *fillNotifier) ensure(c *Cache) bool {
	if n.ready.Load() {
		return true
	}
	n.subMu.Lock()
	defer n.subMu.Unlock()
	if n.ready.Load() {
		return true
	}
	if n.closed || (!n.failedAt.IsZero() && time.Since(n.failedAt) < subscribeRetry) {
		return false
	}
	// The waiter waits for its lease anyway: give the subscription up to
	// half of LeaseWait (at least OpTimeout) to be confirmed. A machine
	// busy with a stampede can take longer than OpTimeout to dial and
	// answer, and a failed subscription makes every waiter poll for a
	// second (LeaseWait/4 per re-check).
	timeout := max(c.cfg.OpTimeout, c.cfg.LeaseWait/2)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ps := c.rdb.Subscribe(ctx, n.channel)
	if _, err := ps.ReceiveTimeout(ctx, timeout); err != nil { // the confirmation
		_ = ps.Close()
		n.failedAt = time.Now()
		c.log.Debug("cachelayer: fill notifications unavailable; lease waits poll", "err", err)
		return false
	}
	msgs := ps.Channel(redis.WithChannelSize(256))
	n.ps = ps
	n.loop.Go(func() {
		for m := range msgs {
			n.wake(m.Payload)
		}
	})
	n.ready.Store(true)
	return true
}

// register returns the channel on which the flight waiting for full is
// woken; unregister with the same channel when done.
func (n *fillNotifier) register(full string) chan struct{} {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.waiters == nil {
		n.waiters = make(map[string]map[chan struct{}]struct{})
	}
	set := n.waiters[full]
	if set == nil {
		set = make(map[chan struct{}]struct{}, 1)
		n.waiters[full] = set
	}
	set[ch] = struct{}{}
	n.mu.Unlock()
	return ch
}

func (n *fillNotifier) unregister(full string, ch chan struct{}) {
	n.mu.Lock()
	if set := n.waiters[full]; set != nil {
		delete(set, ch)
		if len(set) == 0 {
			delete(n.waiters, full)
		}
	}
	n.mu.Unlock()
}

// wake wakes the flights waiting for full (it was filled or released).
func (n *fillNotifier) wake(full string) {
	n.mu.Lock()
	for ch := range n.waiters[full] {
		select {
		case ch <- struct{}{}:
		default: // already woken
		}
	}
	n.mu.Unlock()
}

// close ends the subscription and its loop.
func (n *fillNotifier) close() {
	n.subMu.Lock()
	n.closed = true
	ps := n.ps
	n.ps = nil
	n.ready.Store(false)
	n.subMu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
	n.loop.Wait()
}
