package cachelayer

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// invalidateChannel is the channel on which Redis publishes the keys a
// tracking client's redirect target must drop (RESP2).
const invalidateChannel = "__redis__:invalidate"

// nearClientName is the CLIENT SETNAME of tracking connections, so that an
// operator sees them in CLIENT LIST.
const nearClientName = "ghlcache-near-tracking"

// tracker is the near tier's tracking connection to one master: a client
// of its own (one connection, RESP2) whose every connection runs, before it
// is used, CLIENT ID and CLIENT TRACKING on REDIRECT <its own id> BCAST
// PREFIX <each near prefix>, and then subscribes to __redis__:invalidate.
// The connection is up once the subscription is confirmed: every change of
// a tracked key made after that is published to it. Whatever goes wrong —
// the connection closed or killed, a ping unanswered, a go-redis reconnect
// (messages lost meanwhile) — takes it down; the tier flushes and bypasses
// until a new connection is confirmed.
type tracker struct {
	n    *nearTier
	addr string
	rdb  *redis.Client
	up   atomic.Bool
	id   atomic.Int64 // CLIENT ID of the current connection
	// caughtUp is the tier clock (nearTier.now) at which the last PING
	// answered on this connection was sent: every change Redis made before
	// that PING had been published to the connection before its PONG, so
	// every invalidation of such a change has been applied. 0: none yet on
	// this connection.
	caughtUp atomic.Int64

	mu      sync.Mutex // guards ps, stopped
	ps      *redis.PubSub
	stopped bool
	quit    chan struct{}
	done    chan struct{}
}

// Tracker reconnect backoff.
const (
	trackRetryMin = 50 * time.Millisecond
	trackRetryMax = 2 * time.Second
)

// trackingMasters returns the options of every master of rdb (one for a
// standalone or Sentinel client), or false for a client kind the tier
// cannot track (a Ring).
func trackingMasters(rdb redis.UniversalClient) (func(ctx context.Context) (map[string]*redis.Options, error), bool) {
	switch r := rdb.(type) {
	case *redis.Client:
		return func(context.Context) (map[string]*redis.Options, error) {
			o := r.Options()
			return map[string]*redis.Options{o.Addr: o}, nil
		}, true
	case *redis.ClusterClient:
		return func(ctx context.Context) (map[string]*redis.Options, error) {
			var mu sync.Mutex
			out := map[string]*redis.Options{}
			err := r.ForEachMaster(ctx, func(_ context.Context, node *redis.Client) error {
				o := node.Options()
				mu.Lock()
				out[o.Addr] = o
				mu.Unlock()
				return nil
			})
			return out, err
		}, true
	}
	return nil, false
}

// run is the tier's loop: it keeps one tracker per master (a Cluster's
// masters are read from go-redis's slot table each second, no round trip),
// and re-evaluates whether the tier may serve.
func (n *nearTier) run() {
	defer n.c.wg.Done()
	masters, _ := trackingMasters(n.c.rdb)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), n.c.cfg.OpTimeout*10)
		opts, err := masters(ctx)
		cancel()
		if err == nil && len(opts) > 0 {
			n.reconcile(opts)
		}
		n.reevaluate()
		select {
		case <-n.done:
			n.stopAll()
			return
		case <-tick.C:
		case <-n.wake:
		}
	}
}

// poke makes the loop look again now.
func (n *nearTier) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// reconcile starts a tracker for each new master and stops those of
// masters that left. A change of masters flushes (a key may have moved to a
// master whose changes this process was not told of).
func (n *nearTier) reconcile(opts map[string]*redis.Options) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	changed := false
	for addr, o := range opts {
		if _, ok := n.trackers[addr]; !ok {
			t := n.newTracker(addr, o)
			n.trackers[addr] = t
			go t.loop()
			changed = true
		}
	}
	var gone []*tracker
	for addr, t := range n.trackers {
		if _, ok := opts[addr]; !ok {
			delete(n.trackers, addr)
			gone = append(gone, t)
			changed = true
		}
	}
	n.mu.Unlock()
	for _, t := range gone {
		t.stop()
	}
	if changed {
		n.caughtUp()
		n.flush()
	}
}

// restart makes every tracker reconnect (new prefixes, a failover of a
// standalone master): each goes down and comes back on a new connection.
func (n *nearTier) restart(why string) {
	n.c.log.Debug("cachelayer: near tier tracking restarts", "why", why)
	n.mu.Lock()
	ts := make([]*tracker, 0, len(n.trackers))
	for _, t := range n.trackers {
		ts = append(ts, t)
	}
	n.mu.Unlock()
	for _, t := range ts {
		t.kick()
	}
	n.flush()
	n.poke()
}

// close stops the loop and every tracker (Close).
func (n *nearTier) close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	n.mu.Unlock()
	n.serving.Store(false)
	close(n.done)
	n.store.InvalidateAll()
	n.store.StopAllGoroutines()
}

func (n *nearTier) stopAll() {
	n.mu.Lock()
	ts := n.trackers
	n.trackers = map[string]*tracker{}
	n.mu.Unlock()
	for _, t := range ts {
		t.stop()
	}
}

// newTracker returns the tracker of the master with options o.
func (n *nearTier) newTracker(addr string, o *redis.Options) *tracker {
	opt := *o
	// go-redis changes the pointee of its client's config as it connects:
	// this client has one of its own (and needs no maintenance push
	// notifications, which are RESP3).
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	opt.Protocol = 2 // invalidations as pub/sub messages on the connection itself
	opt.PoolSize, opt.MinIdleConns, opt.MaxIdleConns, opt.MaxActiveConns = 1, 0, 0, 0
	opt.ReadTimeout = max(n.c.cfg.OpTimeout, opt.ReadTimeout)
	t := &tracker{n: n, addr: addr, quit: make(chan struct{}), done: make(chan struct{})}
	prev := o.OnConnect
	opt.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		if prev != nil {
			if err := prev(ctx, cn); err != nil {
				return err
			}
		}
		id, err := cn.ClientID(ctx).Result()
		if err != nil {
			return err
		}
		t.id.Store(id)
		if err := cn.ClientSetName(ctx, nearClientName).Err(); err != nil {
			return err
		}
		args := []any{"client", "tracking", "on", "redirect", id, "bcast"}
		for _, p := range *n.prefixes.Load() {
			args = append(args, "prefix", n.c.prefix+p)
		}
		return cn.Do(ctx, args...).Err()
	}
	t.rdb = redis.NewClient(&opt)
	return t
}

// loop keeps the tracker's connection: connect, confirm, apply messages,
// ping when silent; on any trouble, go down and connect again with backoff.
func (t *tracker) loop() {
	defer close(t.done)
	n := t.n
	retry := trackRetryMin
	warned := false
	for {
		select {
		case <-t.quit:
			return
		default:
		}
		ps := t.subscribe()
		if ps == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(n.c.cfg.OpTimeout*10, time.Second))
		msg, err := ps.ReceiveTimeout(ctx, max(n.c.cfg.OpTimeout*10, time.Second))
		cancel()
		if _, ok := msg.(*redis.Subscription); err != nil || !ok {
			if !warned && err != nil && !t.isStopped() {
				warned = true
				n.c.log.Warn("cachelayer: near tier tracking connection failed; the tier is bypassed", "redis_master", t.addr, "err", err)
			}
			t.down(ps)
			if !t.sleep(retry) {
				return
			}
			retry = min(retry*2, trackRetryMax)
			continue
		}
		warned = false
		t.up.Store(true)
		n.flush() // anything changed while no connection was listening
		n.poke()
		if t.listen(ps) {
			retry = trackRetryMin // the connection worked: reconnect soon
		}
		t.down(ps)
		n.trackerDrops.Add(1)
		if !t.sleep(retry) {
			return
		}
		retry = min(retry*2, trackRetryMax)
	}
}

// listen applies messages until the connection is lost or the tracker is
// stopped. It reports whether any message arrived (the connection worked).
//
// It also keeps the connection's catch-up mark (caughtUp): while near reads
// happen it sends a PING every MaxLag/2, carrying the time it was sent;
// Redis answers it after everything it published to the connection before,
// so its PONG says that every invalidation of a change made before the PING
// has been applied. The tier serves only while that mark is younger than
// MaxLag — so a process too busy to run this loop, or a connection that went
// silent, stops serving within MaxLag instead of serving what it has not
// been told about. While no near reads happen it pings every Keepalive; a
// PING unanswered for Keepalive takes the connection down.
func (t *tracker) listen(ps *redis.PubSub) (worked bool) {
	n := t.n
	tick := max(n.cfg.MaxLag/2, time.Millisecond)
	keepalive := n.cfg.Keepalive
	ctx := context.Background()
	var pingSent, lastPing int64 // tier clock; pingSent 0: no PING outstanding
	ping := func(now int64) bool {
		pingSent, lastPing = now, now
		return ps.Ping(ctx, strconv.FormatInt(now, 10)) == nil
	}
	if !ping(n.now()) {
		return false
	}
	for {
		msg, err := ps.ReceiveTimeout(ctx, tick)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
			case strings.Contains(err.Error(), "unsupported pubsub message payload: <nil>"):
				// Redis invalidates everything (FLUSHDB, FLUSHALL, a
				// tracking table overflow): a message without keys.
				n.flush()
				if n.hookInvalidated != nil {
					n.hookInvalidated(nil)
				}
				worked = true
			default:
				return worked
			}
		} else {
			worked = true
			switch m := msg.(type) {
			case *redis.Message:
				if len(m.PayloadSlice) > 0 {
					n.invalidated(m.PayloadSlice)
				} else if m.Payload != "" {
					n.invalidated([]string{m.Payload})
				}
			case *redis.Pong:
				if sent, err := strconv.ParseInt(m.Payload, 10, 64); err == nil && sent == pingSent {
					t.caughtUp.Store(sent)
					n.caughtUp()
					pingSent = 0
				}
			case *redis.Subscription:
				// go-redis reconnected and resubscribed by itself: whatever
				// was published meanwhile is lost.
				n.reconnects.Add(1)
				t.caughtUp.Store(0)
				n.caughtUp()
				n.flush()
			}
		}
		now := n.now()
		switch {
		case pingSent != 0:
			if time.Duration(now-pingSent) > keepalive {
				n.c.log.Warn("cachelayer: near tier tracking connection silent; reconnecting", "redis_master", t.addr)
				return worked
			}
		case time.Duration(now-lastPing) >= keepalive,
			time.Duration(now-lastPing) >= tick && n.wanted.Load():
			n.wanted.Store(false)
			if !ping(now) {
				return worked
			}
		}
	}
}

// subscribe opens a new subscription (nil once stopped).
func (t *tracker) subscribe() *redis.PubSub {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return nil
	}
	if h := t.n.hookSubscribe; h != nil {
		t.mu.Unlock()
		h(t.addr)
		t.mu.Lock()
		if t.stopped {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(t.n.c.cfg.OpTimeout*10, time.Second))
	defer cancel()
	t.ps = t.rdb.Subscribe(ctx, invalidateChannel)
	return t.ps
}

// down marks the tracker down (the tier stops serving and flushes) and
// closes ps.
func (t *tracker) down(ps *redis.PubSub) {
	t.up.Store(false)
	t.caughtUp.Store(0)
	t.n.caughtUp()
	t.n.reevaluate()
	t.mu.Lock()
	if t.ps == ps {
		t.ps = nil
	}
	t.mu.Unlock()
	_ = ps.Close()
}

// kick closes the current connection: the loop goes down and reconnects.
func (t *tracker) kick() {
	t.up.Store(false)
	t.n.reevaluate()
	t.mu.Lock()
	ps := t.ps
	t.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
}

// stop ends the loop and closes the tracker's client.
func (t *tracker) stop() {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	t.stopped = true
	ps := t.ps
	t.mu.Unlock()
	t.up.Store(false)
	close(t.quit)
	if ps != nil {
		_ = ps.Close()
	}
	<-t.done
	_ = t.rdb.Close()
}

func (t *tracker) isStopped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopped
}

// sleep waits d, or less if stopped; false when stopped.
func (t *tracker) sleep(d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-t.quit:
		return false
	case <-tm.C:
		return true
	}
}
