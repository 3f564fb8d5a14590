package bench

import "runtime"

// HitCounter is a system that counts its cache hits and misses (every
// cached system of the bench); Hits are reads answered from the cache
// without a load.
type HitCounter interface {
	HitsMisses() (hits, misses int64)
}

// Costs are what one workload cost, per operation, measured around it: the
// figures the bench holds systems to (issue 11). Counts are exact; CPU and
// allocations are of the whole machine and of this process.
type Costs struct {
	Reads, Writes int64 `json:"-"`
	// MachineCPUPerOp is the busy CPU time of the machine (this process,
	// Postgres, Redis) per operation; ProcessCPUPerOp this process's.
	MachineCPUPerOp Duration `json:"machine_cpu_per_op"`
	ProcessCPUPerOp Duration `json:"process_cpu_per_op"`
	// SelectsPerRead is the balance SELECTs Postgres received per read;
	// WriteStatementsPerWrite is every other statement (the writes, their
	// transactions, the outbox's own upkeep and sweeps) per write;
	// PostgresRoundTripsPerOp counts a batch as one.
	SelectsPerRead          float64 `json:"pg_selects_per_read"`
	WriteStatementsPerWrite float64 `json:"pg_statements_per_write"`
	PostgresRoundTripsPerOp float64 `json:"pg_round_trips_per_op"`
	// RedisCommandsPerOp and RedisRoundTripsPerOp count what the system's
	// clients sent (a pipeline is one round trip).
	RedisCommandsPerOp   float64 `json:"redis_commands_per_op"`
	RedisRoundTripsPerOp float64 `json:"redis_round_trips_per_op"`
	// HitRatio is hits / (hits + misses) as the system counts them; -1
	// for a system without a cache.
	HitRatio    float64 `json:"hit_ratio"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

// Meter measures Costs between its start and Stop.
type Meter struct {
	queries *QueryCounter
	redis   *RedisCounter
	hits    []HitCounter
	q0      QueryCounts
	r0      RedisCounts
	h0, m0  int64
	mallocs uint64
}

// StartMeter starts measuring what queries, rdb and hits count (rdb and
// hits may be nil: a system without Redis or without a cache).
func StartMeter(queries *QueryCounter, rdb *RedisCounter, hits []HitCounter) *Meter {
	m := &Meter{queries: queries, redis: rdb, hits: hits, q0: queries.Counts(), r0: rdb.Counts()}
	m.h0, m.m0 = sumHits(hits)
	m.mallocs = mallocs()
	return m
}

// Stop returns the costs of reads and writes that used cpu.
func (m *Meter) Stop(reads, writes int64, cpu CPUUsage) Costs {
	allocs := mallocs() - m.mallocs
	q := m.queries.Counts().Sub(m.q0)
	r := m.redis.Counts().Sub(m.r0)
	h, mi := sumHits(m.hits)
	h, mi = h-m.h0, mi-m.m0
	ops := float64(max(reads+writes, 1))
	c := Costs{
		Reads: reads, Writes: writes,
		MachineCPUPerOp:         Duration(float64(cpu.Machine) / ops),
		ProcessCPUPerOp:         Duration(float64(cpu.Process) / ops),
		SelectsPerRead:          float64(q.Balances) / float64(max(reads, 1)),
		PostgresRoundTripsPerOp: float64(q.RoundTrips) / ops,
		RedisCommandsPerOp:      float64(r.Commands) / ops,
		RedisRoundTripsPerOp:    float64(r.RoundTrips) / ops,
		HitRatio:                -1,
		AllocsPerOp:             float64(allocs) / ops,
	}
	if writes > 0 {
		c.WriteStatementsPerWrite = float64(q.Total-q.Balances) / float64(writes)
	}
	if len(m.hits) > 0 && h+mi > 0 {
		c.HitRatio = float64(h) / float64(h+mi)
	}
	return c
}

func sumHits(hs []HitCounter) (hits, misses int64) {
	for _, hc := range hs {
		h, m := hc.HitsMisses()
		hits += h
		misses += m
	}
	return hits, misses
}

// mallocs is the number of heap allocations this process made so far.
func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// medianCosts returns the median of each figure over rounds.
func medianCosts(cs []Costs) Costs {
	f := func(g func(Costs) float64) float64 { return median(cs, g) }
	return Costs{
		MachineCPUPerOp:         Duration(f(func(c Costs) float64 { return float64(c.MachineCPUPerOp) })),
		ProcessCPUPerOp:         Duration(f(func(c Costs) float64 { return float64(c.ProcessCPUPerOp) })),
		SelectsPerRead:          f(func(c Costs) float64 { return c.SelectsPerRead }),
		WriteStatementsPerWrite: f(func(c Costs) float64 { return c.WriteStatementsPerWrite }),
		PostgresRoundTripsPerOp: f(func(c Costs) float64 { return c.PostgresRoundTripsPerOp }),
		RedisCommandsPerOp:      f(func(c Costs) float64 { return c.RedisCommandsPerOp }),
		RedisRoundTripsPerOp:    f(func(c Costs) float64 { return c.RedisRoundTripsPerOp }),
		HitRatio:                f(func(c Costs) float64 { return c.HitRatio }),
		AllocsPerOp:             f(func(c Costs) float64 { return c.AllocsPerOp }),
	}
}
