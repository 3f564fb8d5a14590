package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
)

// ColdRow is one system on a workload that starts from a cold cache: new
// instances under a prefix of their own, nothing cached.
type ColdRow struct {
	System    string  `json:"system"`
	Instances int     `json:"instances"`
	OpsPerSec float64 `json:"ops_per_sec"` // reads and writes
	Reads     int64   `json:"reads"`
	Writes    int64   `json:"writes"`
	Costs
	// MinSelectsPerRead is the fewest Postgres SELECTs per read that any
	// cache deleting a key on write could have spent on the same reads and
	// writes (LoadBound): the floor under SelectsPerRead.
	MinSelectsPerRead float64        `json:"min_pg_selects_per_read"`
	ReadP50           Duration       `json:"read_p50"`
	ReadP99           Duration       `json:"read_p99"`
	WriteP50          Duration       `json:"write_p50,omitzero"`
	StaleReads        int64          `json:"stale_reads"`
	Cache             *CacheCounters `json:"ghlcache_stats,omitempty"` // ghlcache's counters over the last round
	// RoundOpsPerSec and RoundMachineCPUPerOp are each round's figures, in
	// round order: every system's round i ran within the same minute
	// (systems take turns), so ratios between systems are read round by
	// round (PairedRatio), which a drift of the machine's speed over the
	// run does not move.
	RoundOpsPerSec       []float64  `json:"round_ops_per_sec"`
	RoundMachineCPUPerOp []Duration `json:"round_machine_cpu_per_op"`
}

// PairedRatio returns the median over rounds of a[i] / b[i] (rounds where
// b[i] is 0 left out), or 0 when a and b differ in length or are empty.
func PairedRatio[T ~float64 | ~int64](a, b []T) float64 {
	if len(a) != len(b) {
		return 0
	}
	var rs []float64
	for i := range a {
		if b[i] != 0 {
			rs = append(rs, float64(a[i])/float64(b[i]))
		}
	}
	return median(rs, func(x float64) float64 { return x })
}

// CacheCounters are cachelayer.Stats counters, with JSON names.
type CacheCounters struct {
	Hits                 int64 `json:"hits"`      // Redis hits and near-tier hits
	NearHits             int64 `json:"near_hits"` // of which answered from the near tier
	Misses               int64 `json:"misses"`
	Loads                int64 `json:"loads"`
	LoadsShared          int64 `json:"loads_shared"`
	LeaseWaits           int64 `json:"lease_waits"`
	StaleFillsRejected   int64 `json:"stale_fills_rejected"`
	Corrupt              int64 `json:"corrupt"`
	Oversize             int64 `json:"oversize"`
	RedisErrors          int64 `json:"redis_errors"`
	Fallbacks            int64 `json:"fallbacks"`
	Bypasses             int64 `json:"bypasses"` // reads sent past Redis (a pending invalidation, an unsettled namespace)
	Invalidations        int64 `json:"invalidations"`
	InvalidationFailures int64 `json:"invalidation_failures"`
	Recoveries           int64 `json:"recoveries"`
}

// StatsDelta returns the counters of a since b.
func StatsDelta(a, b cachelayer.Stats) CacheCounters {
	return CacheCounters{
		Hits:                 a.Hits + a.NearHits - b.Hits - b.NearHits,
		NearHits:             a.NearHits - b.NearHits,
		Misses:               a.Misses - b.Misses,
		Loads:                a.Loads - b.Loads,
		LoadsShared:          a.LoadsShared - b.LoadsShared,
		LeaseWaits:           a.LeaseWaits - b.LeaseWaits,
		StaleFillsRejected:   a.StaleFillsRejected - b.StaleFillsRejected,
		Corrupt:              a.Corrupt - b.Corrupt,
		Oversize:             a.Oversize - b.Oversize,
		RedisErrors:          a.RedisErrors - b.RedisErrors,
		Fallbacks:            a.Fallbacks - b.Fallbacks,
		Bypasses:             a.Bypasses - b.Bypasses,
		Invalidations:        a.Invalidations - b.Invalidations,
		InvalidationFailures: a.InvalidationFailures - b.InvalidationFailures,
		Recoveries:           a.Recoveries - b.Recoveries,
	}
}

// Add returns the sum of c and o.
func (c CacheCounters) Add(o CacheCounters) CacheCounters {
	return CacheCounters{
		Hits: c.Hits + o.Hits, NearHits: c.NearHits + o.NearHits, Misses: c.Misses + o.Misses, Loads: c.Loads + o.Loads, LoadsShared: c.LoadsShared + o.LoadsShared,
		LeaseWaits: c.LeaseWaits + o.LeaseWaits, StaleFillsRejected: c.StaleFillsRejected + o.StaleFillsRejected,
		Corrupt: c.Corrupt + o.Corrupt, Oversize: c.Oversize + o.Oversize, RedisErrors: c.RedisErrors + o.RedisErrors,
		Fallbacks: c.Fallbacks + o.Fallbacks, Bypasses: c.Bypasses + o.Bypasses, Invalidations: c.Invalidations + o.Invalidations,
		InvalidationFailures: c.InvalidationFailures + o.InvalidationFailures, Recoveries: c.Recoveries + o.Recoveries,
	}
}

// freshResult is one run of runFresh.
type freshResult struct {
	load  *LoadResult
	costs Costs
	cache *CacheCounters
}

// runFresh builds one new instance of kind per env (cold caches under
// prefixes of their own), runs load on them with reads and writes spread
// round-robin over the instances (so that a read may follow another
// instance's write), measures the costs, and closes the instances.
//
// Each system is measured as if it ran alone on the database: the cache
// namespaces of every other ghlcache instance of the run (under
// runPrefix, the bench's: the long-lived instances of the other workloads,
// and any left by an earlier run) are removed
// from cache_namespaces for the run, so that this system's writes pay no
// trigger rows and notifications for caches that are not under test; and
// the fresh instances' own are removed after it. (The long-lived instances
// register theirs again at their next refresh; their hot keys may then be
// stale, which no other measurement reads for freshness.)
func runFresh(ctx context.Context, kind Kind, envs []SystemEnv, load MixedLoad, queries *QueryCounter, runPrefix string) (res freshResult, err error) {
	insts := make([]System, 0, len(envs))
	defer func() {
		for _, s := range insts {
			err = errors.Join(err, s.Close())
		}
		err = errors.Join(err, forgetNamespaces(context.WithoutCancel(ctx), envs[0].Pool, runPrefix, ""))
	}()
	var hits []HitCounter
	for _, env := range envs {
		s, err := NewSystem(kind, env)
		if err != nil {
			return res, err
		}
		insts = append(insts, s)
		if hc, ok := s.(HitCounter); ok {
			hits = append(hits, hc)
		}
	}
	if err := forgetNamespaces(ctx, envs[0].Pool, runPrefix, envs[0].Prefix); err != nil {
		return res, err
	}
	var rr atomic.Uint64
	pick := func() System { return insts[rr.Add(1)%uint64(len(insts))] }
	read := func(ctx context.Context, k Key) (credits.Balance, error) { return pick().Balance(ctx, k) }
	var write func(ctx context.Context, k Key) (credits.Balance, error)
	if load.WriteFraction > 0 {
		write = func(ctx context.Context, k Key) (credits.Balance, error) { return pick().Add(ctx, k, 1) }
	}
	m := StartMeter(queries, envs[0].RedisCounter, hits)
	r, err := load.Run(ctx, read, write)
	if err != nil {
		return res, err
	}
	res.load, res.costs = r, m.Stop(r.Reads, r.Writes, r.CPU)
	if kind.IsGhlcache() {
		b := &CacheCounters{}
		for _, s := range insts {
			*b = b.Add(StatsDelta(s.(*ghlcacheSystem).Stats(), cachelayer.Stats{}))
		}
		res.cache = b
	}
	return res, nil
}

// coldRow summarises the rounds of one system's cold workload.
func coldRow(kind Kind, instances int, rs []freshResult) ColdRow {
	row := ColdRow{System: string(kind), Instances: instances}
	if len(rs) == 0 {
		return row
	}
	row.Reads = int64(median(rs, func(r freshResult) float64 { return float64(r.load.Reads) }))
	row.Writes = int64(median(rs, func(r freshResult) float64 { return float64(r.load.Writes) }))
	cs := make([]Costs, len(rs))
	for i, r := range rs {
		cs[i] = r.costs
		row.RoundOpsPerSec = append(row.RoundOpsPerSec, float64(r.load.Reads+r.load.Writes)/r.load.CPU.Wall.Seconds())
		row.RoundMachineCPUPerOp = append(row.RoundMachineCPUPerOp, r.costs.MachineCPUPerOp)
	}
	row.OpsPerSec = median(row.RoundOpsPerSec, func(x float64) float64 { return x })
	row.Costs = medianCosts(cs)
	row.MinSelectsPerRead = median(rs, func(r freshResult) float64 {
		return float64(r.load.MinLoads) / float64(max(r.load.Reads, 1))
	})
	row.ReadP50 = Duration(median(rs, func(r freshResult) float64 { return float64(r.load.ReadLatency.Quantile(0.5)) }))
	row.ReadP99 = Duration(median(rs, func(r freshResult) float64 { return float64(r.load.ReadLatency.Quantile(0.99)) }))
	if row.Writes > 0 {
		row.WriteP50 = Duration(median(rs, func(r freshResult) float64 { return float64(r.load.WriteLatency.Quantile(0.5)) }))
	}
	for _, r := range rs {
		row.StaleReads = max(row.StaleReads, r.load.StaleReads) // the worst round: any stale read is a bug
	}
	row.Cache = rs[len(rs)-1].cache
	return row
}

// forgetNamespaces removes from cache_namespaces the namespaces under
// under, but those under keep ("" keeps none).
func forgetNamespaces(ctx context.Context, pool *pgxpool.Pool, under, keep string) error {
	if under == "" {
		return nil
	}
	_, err := pool.Exec(ctx, `DELETE FROM cache_namespaces
		WHERE starts_with(prefix, $1) AND ($2 = '' OR NOT starts_with(prefix, $2))`, under, keep)
	if err != nil {
		return fmt.Errorf("bench: forget cache namespaces: %w", err)
	}
	return nil
}
