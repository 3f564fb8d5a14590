package testsvc

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy on a loopback port of its own that forwards every
// connection to a target address. A test points a client at Proxy.Addr and
// then cuts the client off from the target with Block — without touching the
// target, which other clients (another process of the test) keep using — and
// lets it through again with Open.
//
// LoseReply goes further on one connection: what its client sends still
// reaches the target, but the target's next reply is never delivered (the
// proxy closes the connection when it arrives), so the request ran and its
// answer was lost.
//
// Retarget points it at another address, as a virtual IP or a DNS name
// moved to a promoted replica would: existing connections are dropped and
// new ones go to the new target.
//
// Its methods are safe for concurrent use. It is closed when the test ends.
type Proxy struct {
	// Addr is the proxy's "127.0.0.1:port"; it stays the same across
	// Block and Open.
	Addr string

	t testing.TB

	mu     sync.Mutex
	target string                // where new connections go; guarded by mu
	ln     net.Listener          // nil while blocked or closed
	conns  map[net.Conn]struct{} // open client and target connections
	lose   map[string]bool       // client addresses whose next reply LoseReply dropped
	closed bool
	wg     sync.WaitGroup // accept loops and copy goroutines
}

// StartProxy starts a proxy to target ("host:port") on a free loopback port.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsvc: proxy listen: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, t: t, conns: map[net.Conn]struct{}{}, lose: map[string]bool{}}
	p.serve(ln)
	t.Cleanup(p.Close)
	return p
}

func (p *Proxy) serve(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed by Block or Close
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.forward(c) }()
		}
	}()
}

// track registers c so that Block, Retarget and Close can drop it; it
// reports false (and closes c) when the proxy is blocked or closed
// meanwhile, or, for an upstream connection (target not ""), when the
// proxy was retargeted since it was dialled.
func (p *Proxy) track(c net.Conn, target string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.ln == nil || target != "" && target != p.target {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

// targetAddr returns where new connections go.
func (p *Proxy) targetAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) forward(client net.Conn) {
	if !p.track(client, "") {
		return
	}
	defer p.untrack(client)
	target := p.targetAddr()
	upstream, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		return // the client sees its connection closed, as with a dead target
	}
	if !p.track(upstream, target) {
		return
	}
	defer p.untrack(upstream)
	done := make(chan struct{}, 2)
	go func() { // the client's requests
		_, _ = io.Copy(upstream, client)
		done <- struct{}{}
	}()
	go func() { // the target's replies, unless LoseReply cuts them off
		buf := make([]byte, 32<<10)
		for {
			n, err := upstream.Read(buf)
			if n > 0 && p.takeLose(client.RemoteAddr().String()) {
				break // the reply is dropped; the closes below end the connection
			}
			if n > 0 {
				if _, werr := client.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}()
	<-done // either side closing ends both (deferred closes unblock the other copy)
	client.Close()
	upstream.Close()
	<-done
}

// LoseReply makes the proxy lose the target's next reply on the connection
// whose client end is clientAddr (what the client sees as its LocalAddr):
// the client's bytes are still forwarded, but when the target's next bytes
// arrive the proxy closes both sides instead of delivering them. Call it
// before the client sends the request whose reply is to be lost.
func (p *Proxy) LoseReply(clientAddr string) {
	p.mu.Lock()
	p.lose[clientAddr] = true
	p.mu.Unlock()
}

// takeLose reports (once) whether LoseReply asked to lose the next reply to
// clientAddr.
func (p *Proxy) takeLose(clientAddr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.lose[clientAddr] {
		return false
	}
	delete(p.lose, clientAddr)
	return true
}

// Block makes the target unreachable through the proxy: it drops every open
// connection (clients see a reset or EOF) and stops listening, so new
// connections are refused. Open undoes it.
func (p *Proxy) Block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

// Retarget makes new connections go to target ("host:port") and drops
// every open connection (clients see a reset or EOF, and reconnect to the
// new target), as a virtual IP or DNS name moved to a promoted replica
// would. A blocked proxy stays blocked.
func (p *Proxy) Retarget(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
	for c := range p.conns {
		c.Close()
	}
}

// Open makes the target reachable again after Block, listening on the same
// address. It fails the test if the port was taken meanwhile.
func (p *Proxy) Open() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.ln != nil {
		return
	}
	var ln net.Listener
	var err error
	// The old listener's socket may take a moment to be released.
	for deadline := time.Now().Add(2 * time.Second); ; {
		if ln, err = net.Listen("tcp", p.Addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	if err != nil {
		p.t.Errorf("testsvc: proxy reopen %s: %v", p.Addr, err)
		return
	}
	p.serve(ln)
}

// Close stops the proxy for good, drops its connections and waits for its
// goroutines. It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.Block()
	p.wg.Wait()
}

// BlackHole is a TCP listener that accepts connections and never answers
// nor closes them: a client pointed at it sees a server that hangs. It is
// closed when the test ends.
type BlackHole struct {
	// Addr is the listener's "127.0.0.1:port".
	Addr string

	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
	once  sync.Once
}

// StartBlackHole starts a black-hole listener on a free loopback port.
func StartBlackHole(t testing.TB) *BlackHole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsvc: black hole listen: %v", err)
	}
	b := &BlackHole{Addr: ln.Addr().String(), ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			} else if err != nil {
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, c) // held open, never read
			b.mu.Unlock()
		}
	}()
	t.Cleanup(b.Close)
	return b
}

// Close stops listening and closes the held connections. It is idempotent.
func (b *BlackHole) Close() {
	b.once.Do(func() {
		b.ln.Close()
		b.wg.Wait()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
}
