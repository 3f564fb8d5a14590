package testsvc

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
)

// RoundTripTracer is a pgx tracer (queries, batches and prepares) that
// records what the calls made with a context from [RoundTripTracer.Record]
// send to Postgres, and nothing else (a sweeper or remover sharing the pool
// runs under its own context). Install it with NewPool(t, func(c
// *pgxpool.Config) { c.ConnConfig.Tracer = tr }).
//
// A query (or a whole batch) is one round trip once its statement is
// prepared on the connection; pgx's default exec mode prepares each
// statement once per connection first, which Prepares counts apart.
type RoundTripTracer struct{}

// RoundTrips is what one recorded context sent; safe for concurrent use.
type RoundTrips struct {
	mu       sync.Mutex
	sql      []string // per query or batch: the sqlc name (or first line) of its statement(s)
	prepares int
}

type roundTripKey struct{}

// Record returns ctx marked so that the tracer records its statements in rt.
func (*RoundTripTracer) Record(ctx context.Context) (_ context.Context, rt *RoundTrips) {
	rt = &RoundTrips{}
	return context.WithValue(ctx, roundTripKey{}, rt), rt
}

// Count returns the number of round trips recorded: queries plus batches,
// not counting prepares.
func (r *RoundTrips) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sql)
}

// Statements returns, per round trip, the sqlc query name ("-- name: X")
// or else the first line of its SQL; a batch's statements are joined by "; ".
func (r *RoundTrips) Statements() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.sql...)
}

// Prepares returns how many statements were prepared for the recorded calls.
func (r *RoundTrips) Prepares() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.prepares
}

// Reset forgets what was recorded so far.
func (r *RoundTrips) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sql, r.prepares = nil, 0
}

func (r *RoundTrips) add(sql string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sql = append(r.sql, sql)
}

// statementName is the sqlc name of sql ("-- name: CreditApply :one" →
// "CreditApply"), or its first line.
func statementName(sql string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(sql), "\n")
	if name, ok := strings.CutPrefix(line, "-- name: "); ok {
		name, _, _ = strings.Cut(name, " ")
		return name
	}
	return line
}

// TraceQueryStart implements pgx.QueryTracer.
func (*RoundTripTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if rt, ok := ctx.Value(roundTripKey{}).(*RoundTrips); ok {
		rt.add(statementName(data.SQL))
	}
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer.
func (*RoundTripTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart implements pgx.BatchTracer: a batch is one round trip.
func (*RoundTripTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	if rt, ok := ctx.Value(roundTripKey{}).(*RoundTrips); ok {
		names := make([]string, 0, data.Batch.Len())
		for _, q := range data.Batch.QueuedQueries {
			names = append(names, statementName(q.SQL))
		}
		rt.add(strings.Join(names, "; "))
	}
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer.
func (*RoundTripTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

// TraceBatchEnd implements pgx.BatchTracer.
func (*RoundTripTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// TracePrepareStart implements pgx.PrepareTracer.
func (*RoundTripTracer) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	if rt, ok := ctx.Value(roundTripKey{}).(*RoundTrips); ok {
		rt.mu.Lock()
		rt.prepares++
		rt.mu.Unlock()
	}
	return ctx
}

// TracePrepareEnd implements pgx.PrepareTracer.
func (*RoundTripTracer) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// LostExecReplyTracer is [LostReplyTracer] for a statement that is its own
// transaction (autocommit), so that there is no "commit" to lose: after Arm,
// the next statement whose SQL contains Match reaches Postgres and runs
// there, but the reply to its execution is lost (Proxy.LoseReply on its
// connection) — not the reply to the prepare that pgx's default exec mode
// sends first for a statement new to the connection. Use it on a pool from
// [NewPoolThrough].
type LostExecReplyTracer struct {
	Match string

	armed atomic.Pointer[Proxy] // the proxy to lose the next reply on; nil when not armed
	fired atomic.Int64

	mu       sync.Mutex
	prepared map[*pgx.Conn]map[string]bool // statements pgx has prepared on each connection
}

type lostExecKey struct{}

// Arm makes the next statement matching Match lose its reply on proxy.
func (l *LostExecReplyTracer) Arm(proxy *Proxy) { l.armed.Store(proxy) }

// Fired returns how many replies the tracer has made a proxy lose.
func (l *LostExecReplyTracer) Fired() int64 { return l.fired.Load() }

func (l *LostExecReplyTracer) lose(p *Proxy, conn *pgx.Conn) {
	p.LoseReply(conn.PgConn().Conn().LocalAddr().String())
	l.fired.Add(1)
}

// TraceQueryStart implements pgx.QueryTracer; it runs before the statement
// (and its prepare, if any) is sent.
func (l *LostExecReplyTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if !strings.Contains(data.SQL, l.Match) {
		return ctx
	}
	p := l.armed.Swap(nil)
	if p == nil {
		return ctx
	}
	l.mu.Lock()
	prepared := l.prepared[conn][data.SQL]
	l.mu.Unlock()
	if prepared || conn.Config().DefaultQueryExecMode != pgx.QueryExecModeCacheStatement {
		l.lose(p, conn)
		return ctx
	}
	return context.WithValue(ctx, lostExecKey{}, p) // lose the reply after the prepare's
}

// TraceQueryEnd implements pgx.QueryTracer.
func (l *LostExecReplyTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TracePrepareStart implements pgx.PrepareTracer.
func (l *LostExecReplyTracer) TracePrepareStart(ctx context.Context, conn *pgx.Conn, data pgx.TracePrepareStartData) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.prepared == nil {
		l.prepared = make(map[*pgx.Conn]map[string]bool)
	}
	if l.prepared[conn] == nil {
		l.prepared[conn] = make(map[string]bool)
	}
	l.prepared[conn][data.SQL] = true
	return ctx
}

// TracePrepareEnd implements pgx.PrepareTracer: a statement held back in
// TraceQueryStart loses the reply that follows its prepare's.
func (l *LostExecReplyTracer) TracePrepareEnd(ctx context.Context, conn *pgx.Conn, data pgx.TracePrepareEndData) {
	if p, ok := ctx.Value(lostExecKey{}).(*Proxy); ok && data.Err == nil {
		l.lose(p, conn)
	}
}

// Step runs call under its own Record and fails t (naming the step) when
// its error is not want (nil: none) or the statements (sqlc names) it sent
// to Postgres differ from statements.
func (tr *RoundTripTracer) Step(ctx context.Context, t testing.TB, name string, call func(context.Context) error, want error, statements []string) {
	t.Helper()
	sctx, rt := tr.Record(ctx)
	err := call(sctx)
	switch {
	case want == nil && err != nil:
		t.Fatalf("%s: %v", name, err)
	case want != nil && !errors.Is(err, want):
		t.Fatalf("%s: got error %v, want one that Is %v", name, err, want)
	}
	if got := rt.Statements(); !slices.Equal(got, statements) {
		t.Fatalf("%s: the statements sent to Postgres: %q, want %q", name, got, statements)
	}
}
