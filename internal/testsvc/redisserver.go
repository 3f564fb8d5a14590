package testsvc

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServer is a redis-server process of one test, on a loopback port of
// its own, with a temporary data directory and persistence off. Unlike the
// shared Redis of [RedisURL], a test may stop, kill, pause and restart it to
// see how code behaves when Redis fails. It is always killed (by pid) when the
// test ends.
//
// Its methods are safe for concurrent use; they fail the test on error.
type RedisServer struct {
	// Addr is the server's "127.0.0.1:port"; it stays the same across Restart.
	Addr string

	t    testing.TB
	bin  string
	dir  string
	args []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when the current process has exited
	paused bool
}

// redisServerBin returns the path of redis-server, skipping t (failing it
// when [Required]) when it is not installed.
func redisServerBin(t testing.TB, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s not installed: %v (apt-get install redis-server)", name, err)
		if Required() {
			t.Fatalf("REQUIRE_INTEGRATION=1: %s", msg)
		}
		t.Skip(msg)
	}
	return bin
}

// StartRedis starts a standalone redis-server on a free loopback port with
// the extra command-line args (e.g. "--maxmemory", "10mb") and waits until it
// answers PING. It skips t when redis-server is not installed (fails it when
// [Required]). The server is killed when t ends.
func StartRedis(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	return startRedisOnPort(t, FreePort(t), args...)
}

func startRedisOnPort(t testing.TB, port int, args ...string) *RedisServer {
	t.Helper()
	s := &RedisServer{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		t:    t,
		bin:  redisServerBin(t, "redis-server"),
		dir:  t.TempDir(),
	}
	s.args = append([]string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--protected-mode", "no",
		"--loglevel", "warning",
		"--logfile", "redis.log",
	}, args...)
	t.Cleanup(s.Kill)
	s.start()
	return s
}

// URL returns the redis:// URL of the server (database 0).
func (s *RedisServer) URL() string { return "redis://" + s.Addr + "/0" }

// Client returns a client of the server with ContextTimeoutEnabled and
// short timeouts, closed when the test ends. It does not wait for the server.
func (s *RedisServer) Client() *redis.Client {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  s.Addr,
		ContextTimeoutEnabled: true,
		DialTimeout:           time.Second,
		MaxRetries:            -1,
	})
	s.t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func (s *RedisServer) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.t.Fatalf("testsvc: redis-server %s is already running", s.Addr)
	}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("testsvc: start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done, s.paused = cmd, done, false

	// Wait for PING on a connection of our own (no go-redis pool state).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := rawPing(s.Addr, 200*time.Millisecond); err == nil {
			return
		} else if time.Now().After(deadline) {
			s.killLocked()
			log, _ := os.ReadFile(s.dir + "/redis.log")
			s.t.Fatalf("testsvc: redis-server %s did not answer PING: %v\n%s%s", s.Addr, err, stderr.String(), log)
		}
		select {
		case <-done:
			log, _ := os.ReadFile(s.dir + "/redis.log")
			s.cmd = nil
			s.t.Fatalf("testsvc: redis-server %s exited at start:\n%s%s", s.Addr, stderr.String(), log)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rawPing sends PING over a fresh TCP connection and expects +PONG.
func rawPing(addr string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Stop shuts the server down gracefully (SIGTERM) and waits for it to exit.
// It does nothing when the server is not running.
func (s *RedisServer) Stop() { s.signal(syscall.SIGTERM) }

// Kill kills the server (SIGKILL), as a crash would, and waits for it to
// exit. It does nothing when the server is not running.
func (s *RedisServer) Kill() { s.signal(syscall.SIGKILL) }

func (s *RedisServer) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	if sig == syscall.SIGKILL {
		s.killLocked()
		return
	}
	if s.paused {
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Errorf("testsvc: redis-server %s ignored %v; killing it", s.Addr, sig)
		s.killLocked()
	}
	s.cmd = nil
}

func (s *RedisServer) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Pause stops the server with SIGSTOP: connections stay open and requests
// are accepted by the kernel but never answered, like a hung server. Resume
// undoes it.
func (s *RedisServer) Pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.paused {
		return
	}
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.t.Fatalf("testsvc: SIGSTOP redis-server: %v", err)
	}
	s.paused = true
}

// Resume continues a paused server (SIGCONT).
func (s *RedisServer) Resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || !s.paused {
		return
	}
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		s.t.Fatalf("testsvc: SIGCONT redis-server: %v", err)
	}
	s.paused = false
}

// Restart starts the server again on the same port and data directory (so
// a cluster node keeps its identity), killing it first if it is still running,
// and waits until it answers PING. With persistence off its data is gone.
func (s *RedisServer) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Running reports whether the server process is running (possibly paused).
func (s *RedisServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// FreePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before the caller binds it; tests accept that small risk.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsvc: free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// freeClusterPort returns a free port p whose cluster bus port p+10000 is
// free too (ephemeral ports are often above 55535, so they cannot be used).
func freeClusterPort(t testing.TB, taken map[int]bool) int {
	t.Helper()
	for range 1000 {
		p := 20000 + rand.IntN(30000)
		if taken[p] || taken[p+10000] || taken[p-10000] {
			continue
		}
		a, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+10000)))
		a.Close()
		if err != nil {
			continue
		}
		b.Close()
		taken[p] = true
		return p
	}
	t.Fatal("testsvc: no free cluster port pair")
	return 0
}

// RedisCluster is a Redis Cluster of masters only (no replicas), each a
// [RedisServer] on loopback, started by [StartCluster] and killed when the
// test ends.
type RedisCluster struct {
	// Addrs are the masters' "127.0.0.1:port" addresses.
	Addrs []string
	// Servers are the master processes, in the order of Addrs; a test may
	// Kill or Pause one to see a partial outage.
	Servers []*RedisServer

	t testing.TB
}

// StartCluster starts masters redis-server processes in cluster mode,
// joins them with `redis-cli --cluster create … --cluster-replicas 0`, and
// waits until every node reports cluster_state:ok (about 2 s for 3 masters).
// masters must be at least 3 (Redis Cluster's minimum). It skips t when
// redis-server or redis-cli is missing (fails it when [Required]).
func StartCluster(t testing.TB, masters int) *RedisCluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("testsvc: StartCluster: a cluster needs at least 3 masters, not %d", masters)
	}
	cli := redisServerBin(t, "redis-cli")
	c := &RedisCluster{t: t}
	taken := map[int]bool{}
	for range masters {
		s := startRedisOnPort(t, freeClusterPort(t, taken),
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
		)
		c.Servers = append(c.Servers, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testsvc: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, addr := range c.Addrs {
		for {
			out, err := exec.CommandContext(ctx, cli, "-h", "127.0.0.1", "-p", portOf(addr), "cluster", "info").Output()
			if err == nil && strings.Contains(string(out), "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testsvc: cluster node %s not ok: %v\n%s", addr, err, out)
			}
			time.Sleep(50 * time.Millisecond) // polling with a deadline
		}
	}
	return c
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// Client returns a cluster client of all masters with ContextTimeoutEnabled,
// closed when the test ends. It waits until the client can route a command
// to every slot's master.
func (c *RedisCluster) Client() *redis.ClusterClient {
	c.t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 c.Addrs,
		ContextTimeoutEnabled: true,
		DialTimeout:           time.Second,
	})
	c.t.Cleanup(func() { _ = cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return m.Ping(ctx).Err()
	}); err != nil {
		c.t.Fatalf("testsvc: cluster client: %v", err)
	}
	return cc
}
