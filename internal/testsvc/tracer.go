package testsvc

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// QueryTracer is a pgx.QueryTracer for tests: it counts the queries whose
// SQL contains Match, and can hold the end of one such query (after its rows
// were read) until released, to order a reader's load against a writer.
//
// Install it with NewPool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tr }).
type QueryTracer struct {
	Match string // substring of the SQL to count and hold, e.g. "FROM credit_balances"

	count atomic.Int64

	mu      sync.Mutex
	hold    bool          // hold the next matching query's end
	held    chan struct{} // closed when a query is being held
	release chan struct{} // closed to let it go on
}

type tracerKey struct{}

// Count returns how many matching queries have started.
func (q *QueryTracer) Count() int64 { return q.count.Load() }

// HoldNext makes the next matching query block at its end, after its rows
// were read. held is closed once it blocks; call release to let it go on.
func (q *QueryTracer) HoldNext() (held <-chan struct{}, release func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.hold = true
	q.held = make(chan struct{})
	q.release = make(chan struct{})
	r := q.release
	var once sync.Once
	return q.held, func() { once.Do(func() { close(r) }) }
}

// TraceQueryStart implements pgx.QueryTracer.
func (q *QueryTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if !strings.Contains(data.SQL, q.Match) {
		return ctx
	}
	q.count.Add(1)
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.hold {
		return ctx
	}
	q.hold = false
	return context.WithValue(ctx, tracerKey{}, [2]chan struct{}{q.held, q.release})
}

// TraceQueryEnd implements pgx.QueryTracer; it blocks a held query.
func (q *QueryTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if chans, ok := ctx.Value(tracerKey{}).([2]chan struct{}); ok {
		close(chans[0])
		<-chans[1]
	}
}

// LostReplyTracer is a pgx.QueryTracer for a pool from [NewPoolThrough]:
// after Arm, the next statement whose SQL is exactly SQL (pgx sends
// "commit" for Tx.Commit) reaches Postgres and runs there, but its reply is
// lost (Proxy.LoseReply on that statement's connection), so the client sees
// its connection drop with the outcome unknown to it.
type LostReplyTracer struct {
	SQL string

	armed atomic.Pointer[Proxy] // the proxy to lose the next reply on; nil when not armed
	fired atomic.Int64
}

// Arm makes the next statement matching SQL lose its reply on proxy (the one
// NewPoolThrough returned with the pool).
func (l *LostReplyTracer) Arm(proxy *Proxy) { l.armed.Store(proxy) }

// Fired returns how many replies the tracer has made a proxy lose.
func (l *LostReplyTracer) Fired() int64 { return l.fired.Load() }

// TraceQueryStart implements pgx.QueryTracer; it runs before the statement
// is sent.
func (l *LostReplyTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if data.SQL != l.SQL {
		return ctx
	}
	if p := l.armed.Swap(nil); p != nil {
		p.LoseReply(conn.PgConn().Conn().LocalAddr().String())
		l.fired.Add(1)
	}
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer.
func (l *LostReplyTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
