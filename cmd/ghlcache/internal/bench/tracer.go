package bench

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Names of the sqlc queries the workloads count (the "-- name:" line sqlc
// puts at the top of each query's text).
const (
	QueryBalanceGet    = "CreditBalanceGet"
	QueryDefinitionGet = "WorkflowDefinitionGet"
)

// QueryCounter is a pgx.QueryTracer that counts every query a pool sends,
// and separately the reads of balances and of workflow definitions (by the
// sqlc query name). Install it on each pool to count
// (pgxpool.Config.ConnConfig.Tracer); one counter may serve several pools.
type QueryCounter struct {
	roundTrips  atomic.Int64 // queries on their own, and batches (one each)
	total       atomic.Int64 // every query, in a batch or not
	balances    atomic.Int64 // CreditBalanceGet
	definitions atomic.Int64 // WorkflowDefinitionGet
}

var (
	_ pgx.QueryTracer = (*QueryCounter)(nil)
	_ pgx.BatchTracer = (*QueryCounter)(nil)
)

// QueryCounts is a snapshot of a QueryCounter.
type QueryCounts struct {
	RoundTrips  int64 `json:"round_trips"`
	Total       int64 `json:"total"`
	Balances    int64 `json:"balance_reads"`
	Definitions int64 `json:"definition_reads"`
}

// Sub returns c - o.
func (c QueryCounts) Sub(o QueryCounts) QueryCounts {
	return QueryCounts{RoundTrips: c.RoundTrips - o.RoundTrips, Total: c.Total - o.Total,
		Balances: c.Balances - o.Balances, Definitions: c.Definitions - o.Definitions}
}

// Counts returns the counts so far.
func (q *QueryCounter) Counts() QueryCounts {
	return QueryCounts{RoundTrips: q.roundTrips.Load(), Total: q.total.Load(),
		Balances: q.balances.Load(), Definitions: q.definitions.Load()}
}

// TraceQueryStart implements pgx.QueryTracer.
func (q *QueryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	q.roundTrips.Add(1)
	q.count(data.SQL)
	return ctx
}

// TraceBatchStart implements pgx.BatchTracer: a batch is one round trip.
func (q *QueryCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	q.roundTrips.Add(1)
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer.
func (q *QueryCounter) TraceBatchQuery(_ context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	q.count(data.SQL)
}

// TraceBatchEnd implements pgx.BatchTracer.
func (q *QueryCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// count tallies one statement by its sqlc name.
func (q *QueryCounter) count(sql string) {
	q.total.Add(1)
	if name, ok := strings.CutPrefix(sql, "-- name: "); ok {
		switch {
		case strings.HasPrefix(name, QueryBalanceGet+" "):
			q.balances.Add(1)
		case strings.HasPrefix(name, QueryDefinitionGet+" "):
			q.definitions.Add(1)
		}
	}
}

// TraceQueryEnd implements pgx.QueryTracer.
func (q *QueryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// WaitQuiet waits until no query has started for window (loads detached
// from their callers, such as a cache's shared loads, may outlive the
// workload that started them), or until max has passed.
func (q *QueryCounter) WaitQuiet(ctx context.Context, window, max time.Duration) {
	deadline := time.Now().Add(max)
	last := q.total.Load()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(window):
		}
		now := q.total.Load()
		if now == last {
			return
		}
		last = now
	}
}
