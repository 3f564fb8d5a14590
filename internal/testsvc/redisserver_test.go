package testsvc

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisServerLifecycle(t *testing.T) {
	t.Parallel()
	s := StartRedis(t)
	rdb := s.Client()
	ctx := context.Background()
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}

	// Paused: a request times out instead of being answered.
	s.Pause()
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	start := time.Now()
	err := rdb.Get(tctx, "k").Err()
	cancel()
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("get on paused server: err %v after %v, want a timeout", err, time.Since(start))
	}
	s.Resume()
	if err := pollPing(rdb); err != nil {
		t.Fatalf("after resume: %v", err)
	}

	// Killed: requests fail; restarted on the same port: they work again.
	s.Kill()
	if s.Running() {
		t.Fatal("Running after Kill")
	}
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("ping of a killed server succeeded")
	}
	s.Restart()
	if err := pollPing(rdb); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := rdb.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("data survived a restart without persistence: %v", err)
	}
	s.Stop()
	s.Stop() // idempotent
}

// pollPing waits up to 5 s for the client to reconnect.
func pollPing(rdb *redis.Client) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

func TestProxyBlockOpen(t *testing.T) {
	t.Parallel()
	s := StartRedis(t)
	p := StartProxy(t, s.Addr)
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr, ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping through proxy: %v", err)
	}
	p.Block()
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("ping through a blocked proxy succeeded")
	}
	if _, err := net.DialTimeout("tcp", p.Addr, 200*time.Millisecond); err == nil {
		t.Fatal("blocked proxy accepted a connection")
	}
	// The target itself is untouched.
	if err := s.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("target while proxy blocked: %v", err)
	}
	p.Open()
	if err := pollPing(rdb); err != nil {
		t.Fatalf("ping after Open: %v", err)
	}
	p.Close()
	p.Close()
}

func TestProxyLoseReply(t *testing.T) {
	t.Parallel()
	s := StartRedis(t) // a server of this test's own
	p := StartProxy(t, s.Addr)
	c, err := net.DialTimeout("tcp", p.Addr, time.Second)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	p.LoseReply(c.LocalAddr().String())
	if _, err := c.Write([]byte("SET lost-reply yes\r\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatalf("read %d reply bytes; want the connection closed", n)
	}
	got, err := s.Client().Get(context.Background(), "lost-reply").Result()
	if err != nil || got != "yes" {
		t.Fatalf("the request must have run: GET = %q, %v", got, err)
	}
	// Other connections are untouched.
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("ping through proxy: %v", err)
	}
}

func TestBlackHoleHangs(t *testing.T) {
	t.Parallel()
	b := StartBlackHole(t)
	rdb := redis.NewClient(&redis.Options{Addr: b.Addr, ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := rdb.Ping(ctx).Err()
	if err == nil {
		t.Fatal("black hole answered")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("ping took %v", d)
	}
}

func TestStartCluster(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a 3-master cluster")
	}
	c := StartCluster(t, 3)
	cc := c.Client()
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e"} { // several slots
		if err := cc.Set(ctx, k, k, time.Minute).Err(); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	var masters int
	var mu = make(chan struct{}, 1)
	if err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		mu <- struct{}{}
		masters++
		<-mu
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if masters != 3 {
		t.Fatalf("%d masters, want 3", masters)
	}
}
