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
	"slices"
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
		"--repl-diskless-sync-delay", "0", // a replica's full sync starts at once, not after 5 s
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

// RedisCluster is a Redis Cluster, each node a [RedisServer] on loopback,
// started by [StartCluster] (masters only) or [StartClusterReplicas] and
// killed when the test ends.
type RedisCluster struct {
	// Addrs are the masters' "127.0.0.1:port" addresses at the start (as
	// redis-cli chose them).
	Addrs []string
	// Servers are the master processes, in the order of Addrs; a test may
	// Kill or Pause one to see a partial outage.
	Servers []*RedisServer
	// Replicas are the replica processes at the start (none for
	// StartCluster); which master each replicates is in [RedisCluster.Nodes].
	Replicas []*RedisServer

	t   testing.TB
	cli string
}

// StartCluster starts masters redis-server processes in cluster mode,
// joins them with `redis-cli --cluster create … --cluster-replicas 0`, and
// waits until every node reports cluster_state:ok (about 2 s for 3 masters).
// masters must be at least 3 (Redis Cluster's minimum). It skips t when
// redis-server or redis-cli is missing (fails it when [Required]).
func StartCluster(t testing.TB, masters int) *RedisCluster {
	t.Helper()
	return startCluster(t, masters, 0, "2000")
}

// StartClusterReplicas starts a cluster of masters with replicas replicas
// each (cluster-node-timeout 1000 ms, so a replica takes over about 2-4 s
// after its master dies), and waits until every node reports cluster_state:ok
// and every replica's link to its master is up.
//
// Its nodes run with cluster-require-full-coverage no, as a cluster whose
// shards should fail alone must: with Redis's default (yes) every master
// answers CLUSTERDOWN for every key while one shard has no master.
func StartClusterReplicas(t testing.TB, masters, replicas int) *RedisCluster {
	t.Helper()
	return startCluster(t, masters, replicas, "1000", "--cluster-require-full-coverage", "no")
}

func startCluster(t testing.TB, masters, replicas int, nodeTimeout string, extra ...string) *RedisCluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("testsvc: StartCluster: a cluster needs at least 3 masters, not %d", masters)
	}
	cli := redisServerBin(t, "redis-cli")
	c := &RedisCluster{t: t, cli: cli}
	taken := map[int]bool{}
	var all []string
	for i := range masters * (1 + replicas) {
		s := startRedisOnPort(t, freeClusterPort(t, taken), append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", nodeTimeout,
		}, extra...)...)
		all = append(all, s.Addr)
		if i < masters {
			c.Servers = append(c.Servers, s)
			c.Addrs = append(c.Addrs, s.Addr)
		} else {
			c.Replicas = append(c.Replicas, s)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, all...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testsvc: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, addr := range all {
		for {
			out, err := c.cliOutput(ctx, addr, "cluster", "info")
			if err == nil && strings.Contains(out, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testsvc: cluster node %s not ok: %v\n%s", addr, err, out)
			}
			time.Sleep(50 * time.Millisecond) // polling with a deadline
		}
	}
	// redis-cli chooses the masters itself: sort the processes by role.
	if replicas > 0 {
		// redis-cli makes the replicas with CLUSTER REPLICATE on each; the
		// node asked learns their roles by gossip, so ask until it knows
		// every replica (polling with a deadline).
		var nodes []ClusterNode
		for {
			var err error
			nodes, err = c.Nodes(all[0])
			n := 0
			for _, nd := range nodes {
				if nd.MasterID != "" {
					n++
				}
			}
			if err == nil && n == masters*replicas {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testsvc: cluster nodes: %v: %d of %d replicas known", err, n, masters*replicas)
			}
			time.Sleep(50 * time.Millisecond)
		}
		procs := append(append([]*RedisServer{}, c.Servers...), c.Replicas...)
		c.Servers, c.Addrs, c.Replicas = nil, nil, nil
		for _, p := range procs {
			for _, n := range nodes {
				if n.Addr != p.Addr {
					continue
				}
				if n.MasterID == "" {
					c.Servers = append(c.Servers, p)
					c.Addrs = append(c.Addrs, p.Addr)
				} else {
					c.Replicas = append(c.Replicas, p)
				}
			}
		}
		if len(c.Servers) != masters || len(c.Replicas) != masters*replicas {
			t.Fatalf("testsvc: cluster has %d masters and %d replicas, want %d and %d", len(c.Servers), len(c.Replicas), masters, masters*replicas)
		}
	}
	for _, r := range c.Replicas {
		r.WaitReplicating(20 * time.Second)
	}
	for _, m := range c.Servers {
		m.WaitReplicasOnline(replicas, 20*time.Second)
	}
	return c
}

// cliOutput runs redis-cli against addr.
func (c *RedisCluster) cliOutput(ctx context.Context, addr string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, c.cli, append([]string{"-h", "127.0.0.1", "-p", portOf(addr)}, args...)...).Output()
	return string(out), err
}

// ClusterNode is one line of CLUSTER NODES.
type ClusterNode struct {
	ID, Addr string
	Master   bool   // flags include master (and not fail)
	Failed   bool   // flags include fail or fail?
	MasterID string // the master a replica replicates; "" for a master
	Slots    int    // how many slots a master serves
}

// Nodes returns the cluster's nodes as the node at addr sees them (an
// address of any running node).
func (c *RedisCluster) Nodes(addr string) ([]ClusterNode, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := c.cliOutput(ctx, addr, "cluster", "nodes")
	if err != nil {
		return nil, err
	}
	var nodes []ClusterNode
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		n := ClusterNode{ID: f[0], Addr: strings.Split(f[1], "@")[0]}
		flags := f[2]
		n.Failed = strings.Contains(flags, "fail")
		n.Master = strings.Contains(flags, "master") && !n.Failed
		if f[3] != "-" {
			n.MasterID = f[3]
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated
			}
			lo, hi, found := strings.Cut(r, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if found {
				b, _ = strconv.Atoi(hi)
			}
			n.Slots += b - a + 1
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// Server returns the process of the node at addr (master or replica).
func (c *RedisCluster) Server(addr string) *RedisServer {
	c.t.Helper()
	for _, s := range append(append([]*RedisServer{}, c.Servers...), c.Replicas...) {
		if s.Addr == addr {
			return s
		}
	}
	c.t.Fatalf("testsvc: no cluster node %s", addr)
	return nil
}

// ReplicaOf returns a replica of the master at addr, as the master sees it.
func (c *RedisCluster) ReplicaOf(masterAddr string) *RedisServer {
	c.t.Helper()
	nodes, err := c.Nodes(masterAddr)
	if err != nil {
		c.t.Fatalf("testsvc: cluster nodes: %v", err)
	}
	var id string
	for _, n := range nodes {
		if n.Addr == masterAddr {
			id = n.ID
		}
	}
	for _, n := range nodes {
		if n.MasterID == id && id != "" {
			return c.Server(n.Addr)
		}
	}
	c.t.Fatalf("testsvc: master %s has no replica", masterAddr)
	return nil
}

// Promote makes the replica take its master's slots at once with CLUSTER
// FAILOVER TAKEOVER (no agreement of the other masters needed, so it works
// while the master is dead and before the cluster marked it failed), then
// waits up to d for every running node to see it as a master and report
// cluster_state:ok.
func (c *RedisCluster) Promote(replica *RedisServer, d time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := c.cliOutput(ctx, replica.Addr, "cluster", "failover", "takeover"); err != nil || !strings.Contains(out, "OK") {
		c.t.Fatalf("testsvc: CLUSTER FAILOVER TAKEOVER on %s: %v %s", replica.Addr, err, out)
	}
	c.WaitPromoted(replica.Addr, d)
}

// WaitPromoted waits up to d until every running node sees the node at
// addr as a master serving slots and reports cluster_state:ok (the cluster's
// own failover after a master died takes about 2-4 s with node timeout 1 s).
func (c *RedisCluster) WaitPromoted(addr string, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok := true
		for _, s := range append(append([]*RedisServer{}, c.Servers...), c.Replicas...) {
			if !s.Running() {
				continue
			}
			nodes, err := c.Nodes(s.Addr)
			if err != nil {
				ok = false
				break
			}
			seen := false
			for _, n := range nodes {
				if n.Addr == addr && n.Master && n.Slots > 0 {
					seen = true
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			info, err := c.cliOutput(ctx, s.Addr, "cluster", "info")
			cancel()
			if !seen || err != nil || !strings.Contains(info, "cluster_state:ok") {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("testsvc: %s not a master with slots on every node after %v", addr, d)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

// StartReplica starts a standalone redis-server that replicates primary
// (REPLICAOF), with extra args, and waits until its link is up and the
// initial sync is done. It is killed when t ends.
func StartReplica(t testing.TB, primary *RedisServer, args ...string) *RedisServer {
	t.Helper()
	host, port, _ := net.SplitHostPort(primary.Addr)
	r := startRedisOnPort(t, FreePort(t), append([]string{"--replicaof", host, port}, args...)...)
	r.WaitReplicating(20 * time.Second)
	primary.WaitReplicasOnline(1, 20*time.Second)
	return r
}

// WaitReplicasOnline waits up to d until the server, a master, has at least
// n replicas that acknowledge its replication stream: after a PUBLISH
// (replicated, but touching no key), WAIT n answers n. A replica that
// finished its initial sync acknowledges the stream only from its first
// REPLCONF ACK on, up to a second later; until then a WAIT after a write
// would time out.
func (s *RedisServer) WaitReplicasOnline(n int, d time.Duration) {
	s.t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
	defer rdb.Close()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		wait := redis.NewIntCmd(ctx, "wait", n, 200) // bounds each attempt: no sleep needed
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Publish(ctx, "testsvc:replication", "check")
			return p.Process(ctx, wait)
		})
		cancel()
		if err == nil && wait.Val() >= int64(n) {
			return
		}
		if time.Now().After(deadline) {
			info, _ := s.Info("replication")
			s.t.Fatalf("testsvc: master %s has not %d replicas acknowledging after %v (%v):\n%s", s.Addr, n, d, err, info)
		}
	}
}

// WaitReplicating waits up to d until the server, a replica, reports
// master_link_status:up (its initial sync done).
func (s *RedisServer) WaitReplicating(d time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		if info, err := s.Info("replication"); err == nil && strings.Contains(info, "master_link_status:up") {
			return
		}
		if time.Now().After(deadline) {
			info, _ := s.Info("replication")
			s.t.Fatalf("testsvc: replica %s not replicating after %v:\n%s", s.Addr, d, info)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

// Info returns the server's INFO section, on a connection of its own.
func (s *RedisServer) Info(section string) (string, error) {
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return rdb.Info(ctx, section).Result()
}

// Promote makes a standalone replica a master (REPLICAOF NO ONE); its
// replication id changes, as after a Sentinel failover.
func (s *RedisServer) Promote() {
	s.t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.ReplicaOf(ctx, "NO", "ONE").Err(); err != nil {
		s.t.Fatalf("testsvc: REPLICAOF NO ONE on %s: %v", s.Addr, err)
	}
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
	return c.ClientWith(&redis.ClusterOptions{ContextTimeoutEnabled: true, DialTimeout: time.Second})
}

// ClientWith is Client with the caller's options; Addrs defaults to the
// masters'.
func (c *RedisCluster) ClientWith(opts *redis.ClusterOptions) *redis.ClusterClient {
	c.t.Helper()
	if len(opts.Addrs) == 0 {
		// A copy: go-redis appends to Addrs, and clients sharing one
		// backing array race.
		opts.Addrs = slices.Clone(c.Addrs)
	}
	cc := redis.NewClusterClient(opts)
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

// URL returns the cluster's seed nodes in go-redis's cluster URL form,
// redis://first?addr=second&addr=third.
func (c *RedisCluster) URL() string {
	u := "redis://" + c.Addrs[0]
	for i, a := range c.Addrs[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + a
	}
	return u
}

// Sentinel is a redis-server in sentinel mode on a loopback port of its own,
// monitoring one master as "mymaster" (down-after 500 ms, failover timeout
// 2 s), started by [StartSentinel] and killed when the test ends.
type Sentinel struct {
	*RedisServer
	// MasterName is the name clients use: "mymaster".
	MasterName string
}

// StartSentinel starts a Sentinel monitoring master (quorum 1) and waits
// until it has discovered the master's replicas.
func StartSentinel(t testing.TB, master *RedisServer, replicas int) *Sentinel {
	t.Helper()
	port := FreePort(t)
	dir := t.TempDir()
	host, mport, _ := net.SplitHostPort(master.Addr)
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\n"+
		"sentinel monitor mymaster %s %s 1\n"+
		"sentinel down-after-milliseconds mymaster 500\n"+
		"sentinel failover-timeout mymaster 2000\n", port, dir, host, mport)
	file := dir + "/sentinel.conf"
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatalf("testsvc: sentinel config: %v", err)
	}
	s := &RedisServer{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		t:    t,
		bin:  redisServerBin(t, "redis-server"),
		dir:  dir,
		args: []string{file, "--sentinel", "--daemonize", "no", "--loglevel", "warning", "--logfile", "sentinel.log"},
	}
	t.Cleanup(s.Kill)
	s.start()
	sn := &Sentinel{RedisServer: s, MasterName: "mymaster"}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if n, err := sn.knownReplicas(); err == nil && n >= replicas {
			return sn
		}
		if time.Now().After(deadline) {
			t.Fatalf("testsvc: sentinel %s did not discover %d replicas", s.Addr, replicas)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

func (s *Sentinel) client() *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
}

// knownReplicas is how many replicas of mymaster the Sentinel knows and
// could promote: flags exactly "slave" (not down), link to the master ok,
// and an INFO of their own received.
func (s *Sentinel) knownReplicas() (int, error) {
	sc := s.client()
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := sc.Replicas(ctx, s.MasterName).Result()
	n := 0
	for _, rep := range r {
		if rep["flags"] == "slave" && rep["master-link-status"] == "ok" && rep["info-refresh"] != "" && rep["role-reported"] == "slave" {
			n++
		}
	}
	return n, err
}

// MasterAddr is the address the Sentinel gives for mymaster now.
func (s *Sentinel) MasterAddr() string {
	s.t.Helper()
	sc := s.client()
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	a, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil || len(a) != 2 {
		s.t.Fatalf("testsvc: sentinel master address: %v %v", a, err)
	}
	return net.JoinHostPort(a[0], a[1])
}

// Failover forces a failover (SENTINEL FAILOVER: a replica is promoted, the
// old master demoted) and waits up to d until the Sentinel names another
// master and that node reports role:master.
func (s *Sentinel) Failover(d time.Duration) string {
	s.t.Helper()
	before := s.MasterAddr()
	sc := s.client()
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc.Failover(ctx, s.MasterName).Err(); err != nil {
		s.t.Fatalf("testsvc: SENTINEL FAILOVER: %v", err)
	}
	deadline := time.Now().Add(d)
	for {
		if now := s.MasterAddr(); now != before {
			rdb := redis.NewClient(&redis.Options{Addr: now, MaxRetries: -1, DialTimeout: time.Second})
			info, err := rdb.Info(ctx, "replication").Result()
			rdb.Close()
			if err == nil && strings.Contains(info, "role:master") {
				return now
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("testsvc: sentinel failover from %s not done after %v", before, d)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}
