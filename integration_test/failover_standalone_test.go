package integration_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// The standalone failover tests: a primary with one replica, two instances
// of credits.Cached whose clients reach the primary through a
// testsvc.Proxy (the virtual IP, DNS name or Sentinel-managed address a
// deployment points its clients at). A failover is kill -9 of the primary,
// REPLICAOF NO ONE on the replica and the proxy retargeted to it.

// standaloneClient is a client of addr configured as cachelayer.Open
// configures its own for a standalone Redis.
func standaloneClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		DialTimeout:           250 * time.Millisecond,
		DialerRetries:         1,
		ReadTimeout:           time.Second,
		WriteTimeout:          time.Second,
		MaxRetries:            1,
		DisableIdentity:       true,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// peek reads the cache entries one server holds, on a direct connection
// (not through the proxy), with a cache of its own.
type peek struct{ c *cachelayer.Cache }

func newPeek(t *testing.T, server *testsvc.RedisServer, prefix string) peek {
	t.Helper()
	c := cachelayer.New(server.Client(), &cachelayer.Config{Prefix: prefix, OpTimeout: time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return peek{c: c}
}

// balance returns the balance the server's entry of key holds (found
// false: no entry, or a lease).
func (p peek) balance(ctx context.Context, key string) (bal credits.Balance, found bool, err error) {
	found, err = p.c.Get(ctx, key, &bal)
	return bal, found, err
}

// seedCached writes a balance of a new user through a, reads it through b
// so that it is cached, and waits until the replica holds the cached entry.
func seedCached(ctx context.Context, t *testing.T, a, b *instance, primary *testsvc.RedisServer, onPrimary, onReplica peek) (int64, credits.Balance) {
	t.Helper()
	u := testsvc.NewID()
	key := credits.Key(u, "enrichment")
	_, err := a.credits.Add(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 100})
	require.NoError(t, err)
	old, err := b.credits.Balance(ctx, u, "enrichment")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		bal, found, err := onPrimary.balance(ctx, key)
		return err == nil && found && bal.Version == old.Version
	}, 5*time.Second, 10*time.Millisecond, "the balance cached on the primary")
	primary.WaitReplicasOnline(1, 10*time.Second) // the fill has reached the replica
	bal, found, err := onReplica.balance(ctx, key)
	require.NoError(t, err)
	require.True(t, found, "the replica holds the cached balance")
	require.Equal(t, old.Version, bal.Version)
	return u, old
}

// TestStandaloneFailoverLostDeleteRepaired: the lagging replica of issue
// 10 on a standalone primary. The replica, cut off (paused, its link closed
// by the primary), misses the UNLINK of a write; the primary then reports
// no connected replica, so the delete needs no confirmation and the outbox
// row is marked done. The primary dies, the cut-off replica is promoted
// with the old value and the proxy moves to it. The topology epoch changes
// (another run_id and replication id behind the same address) and the
// outbox deletes the keys of recent invalidations again: soon after the new
// master is reachable no read through either instance returns the old
// balance, and the promoted replica no longer holds it.
func TestStandaloneFailoverLostDeleteRepaired(t *testing.T) {
	ctx := testContext(t, 50*time.Second)
	primary := testsvc.StartRedis(t)
	replica := testsvc.StartReplica(t, primary)
	vip := testsvc.StartProxy(t, primary.Addr)
	prefix := "standalone-lost:"
	cfg := &cachelayer.Config{BreakerCooldown: 100 * time.Millisecond, OpTimeout: time.Second}
	rdbA := standaloneClient(t, vip.Addr)
	a := newInstance(t, prefix, rdbA, cfg)
	b := newInstance(t, prefix, standaloneClient(t, vip.Addr), cfg)
	onPrimary, onReplica := newPeek(t, primary, prefix), newPeek(t, replica, prefix)
	u, old := seedCached(ctx, t, a, b, primary, onPrimary, onReplica)
	key := credits.Key(u, "enrichment")
	watch := &waitWatch{key: a.cache.FullKey(key)}
	rdbA.AddHook(watch)

	// Cut the replica off: paused, and its link closed by the primary, so
	// that the UNLINK does not wait in a socket buffer for the replica to
	// read it when it resumes. Then write through a.
	replica.Pause()
	require.NoError(t, primary.Client().Do(ctx, "CLIENT", "KILL", "TYPE", "replica").Err())
	now, err := a.credits.Deduct(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 1})
	require.NoError(t, err)
	require.Greater(t, now.Version, old.Version)
	st, err := a.credits.OutboxStats(ctx)
	require.NoError(t, err)
	waited, replicas := watch.first()
	t.Logf("right after the write: the writer's delete sent WAIT %v, answered %d replicas; outbox depth %d, pending %d",
		waited, replicas, st.Depth, st.Pending)
	if waited {
		// The cache still counted the replica and none confirmed the
		// UNLINK: the row waits and a's reads bypass Redis.
		require.Zero(t, replicas, "the cut-off replica confirmed nothing")
		assert.GreaterOrEqual(t, st.Depth, int64(1), "a delete no replica confirmed leaves its row waiting")
		assert.Equal(t, 1, st.Pending, "and the writer's pending mark")
	}
	// Once the cache has seen that the primary has no connected replica
	// (at the next topology check), a delete needs no confirmation: the
	// sweeper's retry counts the key deleted and the row is done.
	require.Eventually(t, func() bool {
		st, err := a.credits.OutboxStats(ctx)
		return err == nil && st.Depth == 0 && st.Pending == 0
	}, 10*time.Second, 10*time.Millisecond, "the invalidation counted delivered: the primary has no connected replica")
	bal, found, err := onPrimary.balance(ctx, key)
	require.NoError(t, err)
	require.False(t, found && bal.Version == old.Version, "the primary no longer holds the old balance")

	// The failover.
	epochA, epochB := a.cache.TopologyEpoch(), b.cache.TopologyEpoch()
	primary.Kill()
	replica.Resume()
	replica.Promote()
	bal, found, err = onReplica.balance(ctx, key)
	require.NoError(t, err)
	require.True(t, found, "the promoted replica holds the cached balance: the delete was lost")
	require.Equal(t, old.Version, bal.Version, "the promoted replica holds the old balance")
	vip.Retarget(replica.Addr)
	reachable := time.Now()

	// Read through both instances until both return the new balance.
	var lastStale time.Time
	staleReads := 0
	for {
		require.NoError(t, ctx.Err())
		fresh := true
		for _, inst := range []*instance{a, b} {
			bal, err := inst.credits.Balance(ctx, u, "enrichment")
			require.NoError(t, err)
			require.LessOrEqual(t, bal.Version, now.Version)
			if bal.Version < now.Version {
				fresh = false
				staleReads++
				lastStale = time.Now()
			}
		}
		if fresh {
			break
		}
		require.Less(t, time.Since(reachable), 10*time.Second, "the old balance still read %v after the switch", time.Since(reachable))
		time.Sleep(5 * time.Millisecond) // polling with the test's deadline
	}
	window := time.Duration(0)
	if staleReads > 0 {
		window = lastStale.Sub(reachable)
	}
	stA, stB := a.cache.Stats(), b.cache.Stats()
	obA, err := a.credits.OutboxStats(ctx)
	require.NoError(t, err)
	obB, err := b.credits.OutboxStats(ctx)
	require.NoError(t, err)
	t.Logf("old balance read %d times, the last %v after the new master was reachable; epochs a %d→%d b %d→%d; "+
		"re-deleted a=%d b=%d; recoveries a=%d b=%d", staleReads, window.Round(time.Millisecond),
		epochA, a.cache.TopologyEpoch(), epochB, b.cache.TopologyEpoch(), obA.Redeleted, obB.Redeleted,
		stA.Recoveries, stB.Recoveries)
	// Nothing fails while the proxy switches (go-redis drops the closed
	// connections and dials again), so only the next topology check sees
	// the new master: the window is up to TopologyInterval (2 s) plus a
	// sweeper step (EpochPoll, 100 ms here) plus the re-delete. The bound
	// leaves room for a loaded machine; the measured window is logged.
	assert.Less(t, window, 5*time.Second, "the old balance read long after the new master was reachable")
	// Each instance sees the new master by its own next topology check (a
	// TopologyEpoch call starts one when the last is older than
	// TopologyInterval); the other instance's re-delete may have repaired
	// the key before that.
	for name, inst := range map[string]struct {
		c    *instance
		from uint64
	}{"a": {a, epochA}, "b": {b, epochB}} {
		deadline := time.Now().Add(10 * time.Second)
		for inst.c.cache.TopologyEpoch() == inst.from && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling with a deadline
		}
		assert.NotEqual(t, inst.from, inst.c.cache.TopologyEpoch(), "%s saw a new topology epoch", name)
	}

	// It stays repaired: the promoted replica's entry is gone or new, and
	// every later read is new.
	bal, found, err = onReplica.balance(ctx, key)
	require.NoError(t, err)
	assert.False(t, found && bal.Version != now.Version, "the promoted replica holds version %d, not %d", bal.Version, now.Version)
	for range 20 {
		for _, inst := range []*instance{a, b} {
			bal, err := inst.credits.Balance(ctx, u, "enrichment")
			require.NoError(t, err)
			require.Equal(t, now.Version, bal.Version)
		}
	}
}

// waitWatch records the WAIT of the first pipeline after it was added that
// UNLINKs key (a delete's round trip).
type waitWatch struct {
	key string

	mu       sync.Mutex
	seen     bool
	waited   bool  // the pipeline had a WAIT
	replicas int64 // its answer
}

// first returns what the first delete of key sent and got: whether it
// waited for replicas, and how many confirmed.
func (w *waitWatch) first() (waited bool, replicas int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.waited, w.replicas
}

func (*waitWatch) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (*waitWatch) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (w *waitWatch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if !unlinks(cmds, w.key) {
			return err
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.seen {
			return err
		}
		w.seen = true
		for _, cmd := range cmds {
			if c, ok := cmd.(*redis.IntCmd); ok && cmd.Name() == "wait" {
				w.waited, w.replicas = true, c.Val()
			}
		}
		return err
	}
}

// unlinks reports whether cmds UNLINK key.
func unlinks(cmds []redis.Cmder, key string) bool {
	for _, cmd := range cmds {
		if args := cmd.Args(); cmd.Name() == "unlink" && len(args) > 1 && args[1] == key {
			return true
		}
	}
	return false
}

// holdHook holds the first pipeline that UNLINKs key (a delete's round
// trip) until release is closed, after closing held.
type holdHook struct {
	key     string
	once    *sync.Once
	held    chan struct{}
	release chan struct{}
}

func (holdHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (holdHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h holdHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if unlinks(cmds, h.key) {
			h.once.Do(func() {
				close(h.held)
				<-h.release
			})
		}
		return next(ctx, cmds)
	}
}

// TestMasterKilledBetweenCommitAndInvalidation: a write commits, and before
// its invalidation reaches Redis the primary dies; the replica, which holds
// the cached old balance, is promoted and the proxy moves to it. The
// invalidation must reach the new master: released while the proxy still
// leads to the dead primary, the writer's own delete fails (its row waits,
// its key is pending) and the sweeper deletes the key once the new master
// is reachable; released after the switch, the writer's delete goes to the
// new master itself. Either way both instances then read the new balance,
// the promoted replica no longer holds the old one, and the outbox empties.
func TestMasterKilledBetweenCommitAndInvalidation(t *testing.T) {
	for _, afterSwitch := range []bool{false, true} {
		name := "released before the switch"
		if afterSwitch {
			name = "released after the switch"
		}
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t, 40*time.Second)
			primary := testsvc.StartRedis(t)
			replica := testsvc.StartReplica(t, primary)
			vip := testsvc.StartProxy(t, primary.Addr)
			prefix := "standalone-between:"
			cfg := &cachelayer.Config{BreakerCooldown: 100 * time.Millisecond, OpTimeout: time.Second}
			rdbA := standaloneClient(t, vip.Addr)
			a := newInstance(t, prefix, rdbA, cfg)
			b := newInstance(t, prefix, standaloneClient(t, vip.Addr), cfg)
			onPrimary, onReplica := newPeek(t, primary, prefix), newPeek(t, replica, prefix)
			u, old := seedCached(ctx, t, a, b, primary, onPrimary, onReplica)
			key := credits.Key(u, "enrichment")

			hook := holdHook{key: a.cache.FullKey(key), once: &sync.Once{}, held: make(chan struct{}), release: make(chan struct{})}
			var releaseOnce sync.Once
			release := func() { releaseOnce.Do(func() { close(hook.release) }) }
			t.Cleanup(release) // a failed test does not leave the writer held
			rdbA.AddHook(hook)
			type result struct {
				bal credits.Balance
				err error
			}
			deducted := make(chan result, 1)
			go func() {
				bal, err := a.credits.Deduct(ctx, credits.Change{UserID: u, Type: "enrichment", Amount: 1})
				deducted <- result{bal, err}
			}()
			select {
			case <-hook.held: // committed; its invalidation is held
			case <-ctx.Done():
				t.Fatal("the write's invalidation never came")
			}
			primary.Kill()
			replica.Promote()
			bal, found, err := onReplica.balance(ctx, key)
			require.NoError(t, err)
			require.True(t, found, "the promoted replica holds the cached balance")
			require.Equal(t, old.Version, bal.Version, "the promoted replica holds the old balance")

			var now credits.Balance
			wait := func() {
				select {
				case r := <-deducted:
					require.NoError(t, r.err)
					now = r.bal
				case <-ctx.Done():
					t.Fatal("the write never returned")
				}
				require.Greater(t, now.Version, old.Version)
			}
			if !afterSwitch {
				release()
				wait()
				st, err := a.credits.OutboxStats(ctx)
				require.NoError(t, err)
				assert.GreaterOrEqual(t, st.Depth, int64(1), "the writer's delete failed: its row waits for the sweeper")
				assert.Equal(t, 1, st.Pending, "and its key is pending")
				own, err := a.credits.Balance(ctx, u, "enrichment")
				require.NoError(t, err)
				assert.Equal(t, now.Version, own.Version, "the writer reads its own write meanwhile (from Postgres)")
				vip.Retarget(replica.Addr)
			} else {
				vip.Retarget(replica.Addr)
				release()
				wait()
			}
			switched := time.Now()

			require.Eventually(t, func() bool {
				bal, found, err := onReplica.balance(ctx, key)
				return err == nil && (!found || bal.Version == now.Version)
			}, 15*time.Second, 10*time.Millisecond, "the invalidation reached the promoted replica")
			gone := time.Since(switched)
			require.Eventually(t, func() bool {
				for _, inst := range []*instance{a, b} {
					bal, err := inst.credits.Balance(ctx, u, "enrichment")
					if err != nil || bal.Version != now.Version {
						return false
					}
				}
				return true
			}, 10*time.Second, 10*time.Millisecond, "both instances read the new balance")
			require.Eventually(t, func() bool {
				st, err := a.credits.OutboxStats(ctx)
				return err == nil && st.Depth == 0 && st.Pending == 0
			}, 15*time.Second, 10*time.Millisecond, "the outbox empties and nothing stays pending")
			empty := time.Since(switched)
			obA, err := a.credits.OutboxStats(ctx)
			require.NoError(t, err)
			obB, err := b.credits.OutboxStats(ctx)
			require.NoError(t, err)
			stA := a.cache.Stats()
			t.Logf("old entry gone %v after the switch, outbox empty after %v; swept a=%d b=%d, re-deleted a=%d b=%d; "+
				"a: not replicated %d, invalidation failures %d, epoch %d",
				gone.Round(time.Millisecond), empty.Round(time.Millisecond), obA.Swept, obB.Swept,
				obA.Redeleted, obB.Redeleted, stA.NotReplicated, stA.InvalidationFailures, a.cache.TopologyEpoch())
		})
	}
}
