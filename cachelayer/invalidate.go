package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DeleteFullEach is DeleteFull with one outcome per key: errs[i] is nil
// only when fullKeys[i]'s delete reached Redis and, when its master has
// replicas, a replica confirmed it (see Config.InvalidateReplicas), so that
// a caller keeping a durable record of each invalidation (an outbox
// sweeper) can remove the records whose keys were deleted and keep the
// others. It returns nil when every key was deleted.
//
// Keys are grouped by master; each master gets one pipelined round trip on
// one connection: an UNLINK per key, then WAIT for its replicas. A key whose
// master's breaker is open is not attempted and gets an error that Is
// ErrUnavailable; so does every key of a master that failed. A key that was
// deleted on its master but not confirmed by enough replicas within
// Config.InvalidateWaitTimeout gets an error that Is [ErrNotReplicated]. An
// empty or over-long key gets ErrInvalid (and the others are attempted). In
// no-cache mode and after Close every key gets an error that Is
// ErrUnavailable. Leases on the keys are voided and their in-process
// flights forgotten, whatever the outcome.
func (c *Cache) DeleteFullEach(ctx context.Context, fullKeys []string) (errs []error) {
	if len(fullKeys) == 0 {
		return nil
	}
	errs = make([]error, len(fullKeys))
	valid := make([]int, 0, len(fullKeys))
	for i, k := range fullKeys {
		if k == "" || len(k) > MaxKeyLen+len(c.prefix) {
			errs[i] = fmt.Errorf("%w: full key %q", ErrInvalid, k)
			continue
		}
		valid = append(valid, i)
	}
	keys := make([]string, len(valid))
	for j, i := range valid {
		keys[j] = fullKeys[i]
	}
	if len(keys) > 0 {
		var kerrs []error
		if c.noCache() {
			c.forget(keys)
			err := fmt.Errorf("cachelayer: delete: %w", c.unavailableErr())
			kerrs = make([]error, len(keys))
			for j := range kerrs {
				kerrs[j] = err
			}
		} else {
			kerrs = c.deleteEach(ctx, keys, nil)
		}
		for j, i := range valid {
			if kerrs != nil {
				errs[i] = kerrs[j]
			}
		}
	}
	for _, err := range errs {
		if err != nil {
			return errs
		}
	}
	return nil
}

// ErrNotReplicated is the error of a key that its master deleted but not
// enough of its replicas confirmed within Config.InvalidateWaitTimeout: if
// the master failed now, a replica promoted in its place could still hold
// the old value. The caller should delete the key again later (the outbox
// keeps its record).
var ErrNotReplicated = errors.New("cachelayer: delete not confirmed by a replica")

// deleteGroup is the keys of one master, deleted in one round trip.
type deleteGroup struct {
	node *redis.Client // the master's client; nil: send through c.rdb (no WAIT)
	addr string        // the master's address; "" for a standalone master
	br   *breaker
	idx  []int // positions in the keys of deleteEach
}

// deleteEach deletes keys (already validated, Redis configured) and returns
// nil or one error per key. Invalidations counts each key whose UNLINK
// Redis acknowledged; InvalidationFailures counts a call of which some key
// did not reach Redis.
func (c *Cache) deleteEach(ctx context.Context, keys []string, repls []*replacement) []error {
	c.forget(keys)
	defer c.forget(keys)
	ictx, cancel := context.WithTimeout(ctx, c.cfg.InvalidateTimeout)
	defer cancel()
	if c.topo != nil {
		c.topo.maybeCheck()
	}
	errs := make([]error, len(keys))
	groups, err := c.groupByMaster(ictx, keys)
	if err != nil { // no slot table: nothing reached Redis
		err = c.outcome(ctx, err)
		c.st.invalidationFailures.Add(1)
		for i := range errs {
			c.count(telInvalidationFailures, keys[i], 1)
			errs[i] = fmt.Errorf("cachelayer: delete: %w", asUnavailable(err))
		}
		return errs
	}
	if len(groups) == 1 {
		c.deleteGroup(ctx, ictx, keys, repls, groups[0], errs)
	} else {
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Go(func() { c.deleteGroup(ctx, ictx, keys, repls, g, errs) })
		}
		wg.Wait()
	}
	var some, unreached bool
	for _, err := range errs {
		some = some || err != nil
		unreached = unreached || err != nil && !errors.Is(err, ErrNotReplicated)
	}
	c.nearSettle(ctx, keys, errs)
	if unreached {
		c.st.invalidationFailures.Add(1)
		if c.tel != nil {
			for i, err := range errs {
				if err != nil && !errors.Is(err, ErrNotReplicated) {
					c.count(telInvalidationFailures, keys[i], 1)
				}
			}
		}
	}
	if !some {
		return nil
	}
	return errs
}

// groupByMaster groups keys by the master that holds them: one group on a
// standalone Redis (or another client kind), one per master on a Cluster.
func (c *Cache) groupByMaster(ctx context.Context, keys []string) ([]*deleteGroup, error) {
	all := func() []int {
		idx := make([]int, len(keys))
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	switch r := c.rdb.(type) {
	case *redis.ClusterClient:
		byAddr := map[string]*deleteGroup{}
		var order []*deleteGroup
		for i, k := range keys {
			node, err := r.MasterForKey(ctx, k) // no round trip once the slot table is loaded
			if err != nil {
				return nil, err
			}
			c.markShardsReady()
			addr := node.Options().Addr
			g := byAddr[addr]
			if g == nil {
				g = &deleteGroup{node: node, addr: addr, br: c.shards.forAddr(addr)}
				byAddr[addr] = g
				order = append(order, g)
			}
			g.idx = append(g.idx, i)
		}
		return order, nil
	case *redis.Client:
		return []*deleteGroup{{node: r, br: c.br, idx: all()}}, nil
	}
	return []*deleteGroup{{br: c.br, idx: all()}}, nil
}

// waitFor returns how many replicas a delete on the group's master must be
// confirmed by (0: no WAIT), learning the master's replicas with one INFO if
// no topology check has seen it yet.
func (c *Cache) waitFor(ctx context.Context, g *deleteGroup) int {
	want := c.cfg.InvalidateReplicas
	if want < 0 || g.node == nil || c.topo == nil || c.topo.waitDenied.Load() {
		return 0
	}
	n := c.topo.replicasOf(g.addr)
	if n < 0 {
		var err error
		if n, err = c.topo.learnReplicas(ctx, g.addr, g.node); err != nil {
			// Unknown until the next topology check (an ACL without
			// +info, or the UNLINKs will fail as well): no WAIT, and no
			// INFO before every delete meanwhile.
			c.topo.assumeReplicas(g.addr, 0)
			return 0
		}
	}
	if n == 0 {
		return 0
	}
	if want == 0 {
		want = 1
	}
	return min(want, n)
}

// deleteGroup deletes the keys of one group in one round trip and sets
// their errors in errs.
func (c *Cache) deleteGroup(ctx, ictx context.Context, keys []string, repls []*replacement, g *deleteGroup, errs []error) {
	fail := func(err error) {
		for _, i := range g.idx {
			errs[i] = err
		}
	}
	if !g.br.allow() {
		fail(fmt.Errorf("cachelayer: delete: %w", errBreakerOpen))
		return
	}
	wait := c.waitFor(ictx, g)
	var pipe redis.Pipeliner
	if g.node != nil {
		pipe = g.node.Pipeline()
	} else {
		pipe = c.rdb.Pipeline()
	}
	// Each key's delete is UNLINK, or for a Replace the replace script,
	// sent as EVAL so that it never fails NOSCRIPT after a restart (a retry
	// would fall outside the pipeline's WAIT).
	unlinks := make([]*redis.IntCmd, len(g.idx))
	for j, i := range g.idx {
		if repls != nil && repls[i] != nil {
			unlinks[j] = repls[i].cmd(ictx, c, keys[i])
			_ = pipe.Process(ictx, unlinks[j])
			continue
		}
		unlinks[j] = pipe.Unlink(ictx, keys[i])
	}
	var waited *redis.IntCmd
	// At most half the round trip's InvalidateTimeout, so that a WAIT
	// running out reports the keys unreplicated rather than the deadline
	// failing the pipeline; never 0 (WAIT 0 blocks forever).
	ms := max(min(c.cfg.InvalidateWaitTimeout, c.cfg.InvalidateTimeout/2).Milliseconds(), 1)
	if wait > 0 {
		waited = redis.NewIntCmd(ictx, "wait", wait, ms)
		_ = pipe.Process(ictx, waited)
	}
	_, err := pipe.Exec(ictx)

	// One outcome for the breaker: a failure to talk to the master, else
	// an error reply that says it cannot serve, else success.
	var health error
	moved := false
	for _, cmd := range unlinks {
		if e := cmd.Err(); e != nil {
			var reply redis.Error
			if !errors.As(e, &reply) || unhealthyReply(e) {
				health = e
				break
			}
			if redis.HasErrorPrefix(e, "MOVED") || redis.HasErrorPrefix(e, "ASK") {
				moved = true
			}
		}
	}
	waitDenied := false
	if health == nil && waited != nil {
		if e := waited.Err(); e != nil {
			var reply redis.Error
			switch {
			case redis.HasErrorPrefix(e, "NOPERM") || redis.HasErrorPrefix(e, "ERR unknown command"):
				// The ACL (or a proxy) refuses WAIT: say so once and delete
				// without it, rather than report every key not replicated.
				waitDenied = true
				if c.topo.waitDenied.CompareAndSwap(false, true) {
					c.log.Warn("cachelayer: redis refuses WAIT; deletes are no longer confirmed by a replica (allow +wait, or set InvalidateReplicas < 0)", "err", e)
				}
			case !errors.As(e, &reply) || unhealthyReply(e):
				health = e
			}
		}
	}
	if health == nil && err != nil {
		var reply redis.Error
		if !errors.As(err, &reply) {
			health = err
		}
	}
	if herr := c.outcomeOn(ctx, g.br, health); herr != nil {
		fail(fmt.Errorf("cachelayer: delete: %w", asUnavailable(herr)))
		return
	}
	if moved && c.shards != nil {
		c.shards.reload()
	}
	confirmed := waited == nil || waitDenied || waited.Err() == nil && waited.Val() >= int64(wait)
	var done int64
	for j, i := range g.idx {
		if e := unlinks[j].Err(); e != nil {
			errs[i] = fmt.Errorf("cachelayer: delete %s: %w", keys[i], asUnavailable(e))
			continue
		}
		done++
		c.count(telInvalidations, keys[i], 1)
		if !confirmed {
			errs[i] = fmt.Errorf("cachelayer: delete %s: %w (WAIT %d: %d replicas within %v)",
				keys[i], ErrNotReplicated, wait, waited.Val(), time.Duration(ms)*time.Millisecond)
		}
	}
	c.st.invalidations.Add(done)
	if !confirmed {
		c.st.notReplicated.Add(done)
	}
}

// asUnavailable makes err Is ErrUnavailable unless it already is.
func asUnavailable(err error) error {
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// joinDeleteErrors is DeleteFull's error from DeleteFullEach's: nil when
// every key was deleted (and confirmed); else the first key's error, and the
// first of each other kind (unavailable, not replicated, invalid), so that
// errors.Is finds every cause.
func joinDeleteErrors(errs []error) error {
	var causes []error
	seen := map[error]bool{}
	n := 0
	for _, err := range errs {
		if err == nil {
			continue
		}
		n++
		kind := error(nil)
		for _, k := range []error{ErrUnavailable, ErrNotReplicated, ErrInvalid} {
			if errors.Is(err, k) {
				kind = k
				break
			}
		}
		if len(causes) == 0 || kind != nil && !seen[kind] {
			causes = append(causes, err)
		}
		if kind != nil {
			seen[kind] = true
		}
	}
	switch {
	case n == 0:
		return nil
	case len(errs) == 1:
		return causes[0]
	case len(causes) == 1:
		return fmt.Errorf("%d of %d keys: %w", n, len(errs), causes[0])
	}
	return fmt.Errorf("%d of %d keys: %w", n, len(errs), errors.Join(causes...))
}
