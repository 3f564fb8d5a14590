package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/workflows"
)

// seed creates the users' balances (one statement) and the workflow
// definitions (through the store, a few at a time), moving the progress
// bar through its first demoSeedTicks steps.
func (d *demo) seed(ctx context.Context) error {
	balances := d.opts.users * len(demoCreditTypes)
	d.bar.set(1, fmt.Sprintf("seeding %d balances", balances))
	first, err := bench.SeedBalances(ctx, d.pool, d.opts.users, demoCreditTypes)
	if err != nil {
		return err
	}
	d.firstUser = first
	store := workflows.NewStore(d.pool)
	d.defIDs = make([]int64, d.opts.workflows)
	var saved atomic.Int64
	return bench.ForEach(ctx, len(d.defIDs), 8, nil, func(ctx context.Context, i int) error {
		def, err := store.Save(ctx, workflows.Definition{
			Name: fmt.Sprintf("demo workflow %d", i+1),
			Spec: json.RawMessage(fmt.Sprintf(`{"steps":[{"action":"enrich"},{"action":"email","template":"t%d"}],"rev":0}`, i)),
		})
		if err != nil {
			return err
		}
		d.defIDs[i] = def.ID
		n := int(saved.Add(1))
		d.bar.set(demoSeedTicks/2+n*demoSeedTicks/2/len(d.defIDs),
			fmt.Sprintf("seeding workflow definitions %d/%d", n, len(d.defIDs)))
		return nil
	})
}

// warm reads every balance and definition once through the cached
// repositories.
func (d *demo) warm(ctx context.Context) (*demoWarmup, error) {
	start := time.Now()
	balances := d.opts.users * len(demoCreditTypes)
	err := bench.ForEach(ctx, balances+len(d.defIDs), 8, nil, func(ctx context.Context, i int) error {
		if i < balances {
			_, err := d.credits.Balance(ctx, d.firstUser+int64(i/len(demoCreditTypes)), demoCreditTypes[i%len(demoCreditTypes)])
			return err
		}
		_, err := d.workflows.Definition(ctx, d.defIDs[i-balances])
		return err
	})
	if err != nil {
		return nil, err
	}
	return &demoWarmup{Keys: balances + len(d.defIDs), Wall: bench.Duration(time.Since(start).Round(time.Millisecond))}, nil
}

// The names of the demo workload's operations.
const (
	opBalanceRead    = "balance read"
	opDefinitionRead = "definition read"
	opCreditWrite    = "credit write"
	opWorkflowSave   = "workflow save"
)

// phase runs the workload for the phase duration, reading through the
// cached repositories when cached is set (else through the stores), then
// the cold-key burst. Failed operations are counted in the phase; its error
// is ctx's only.
func (d *demo) phase(ctx context.Context, name string, cached bool, barBase int) (demoPhase, error) {
	ph := demoPhase{Name: name}
	readBalance := func(ctx context.Context, u int64, t credits.Type) (credits.Balance, error) {
		return d.creditStore.Balance(ctx, u, t)
	}
	readDef := d.wfStore.Definition
	if cached {
		readBalance, readDef = d.credits.Balance, d.workflows.Definition
	}
	load := bench.Workload{
		Duration: d.opts.duration,
		Seed:     uint64(barBase) * 1_000_003,
		Groups:   d.groups(readBalance, readDef),
		// The progress bar follows the clock.
		ProgressEvery: d.opts.duration / demoProgressTicks,
		Progress: func(elapsed time.Duration) {
			d.bar.set(barBase+int(elapsed*demoProgressTicks/d.opts.duration), name)
		},
	}
	stats0, queries0 := d.cache.Stats(), d.counter.Counts()
	res, err := load.Run(ctx)
	if err != nil {
		return ph, err
	}
	stats, queries := d.cache.Stats(), d.counter.Counts().Sub(queries0)

	var hist bench.Histogram
	for _, op := range []string{opBalanceRead, opDefinitionRead} {
		r := res.Op(op)
		hist.Merge(&r.Latency)
		ph.Reads += r.Done
	}
	ph.CreditWrites = res.Op(opCreditWrite).Done
	ph.InsufficientDeducts = res.Op(opCreditWrite).Refused
	ph.WorkflowSaves = res.Op(opWorkflowSave).Done
	ph.Errors = res.Failed
	if res.FirstErr != nil {
		ph.FirstError = res.FirstErr.Error()
	}
	usage := res.CPU
	ph.ReadsPerSec = float64(ph.Reads) / usage.Wall.Seconds()
	ph.P50, ph.P99, ph.P999 = bench.Duration(hist.Quantile(0.5)), bench.Duration(hist.Quantile(0.99)), bench.Duration(hist.Quantile(0.999))
	ph.ReadQueries = queries.Balances + queries.Definitions
	ph.Avoided = max(ph.Reads-ph.ReadQueries, 0)
	ph.TotalQueries = queries.Total
	ph.Cache = bench.StatsDelta(stats, stats0)
	ph.BreakerOpenings = max(ph.Cache.Recoveries+b2i(stats.BreakerOpen)-b2i(stats0.BreakerOpen), 0)
	ph.BreakerOpenAtEnd = stats.BreakerOpen
	ph.setRatios()
	if ph.Reads > 0 {
		ph.CPUPerRead = bench.Duration(usage.Process / time.Duration(ph.Reads))
		ph.MachineCPUPerRead = bench.Duration(usage.Machine / time.Duration(ph.Reads))
	}

	// The burst: a write invalidates the hottest balance, then many
	// goroutines read it at once.
	ph.Burst.Goroutines = d.opts.burst
	hot := bench.Key{UserID: d.firstUser, Type: demoCreditTypes[0]}
	if _, err := d.credits.Add(ctx, credits.Change{UserID: hot.UserID, Type: hot.Type, Amount: 1, Reason: "demo burst"}); err != nil {
		ph.Burst.Error = err.Error()
		return ph, ctx.Err()
	}
	read := func(ctx context.Context, k bench.Key) (credits.Balance, error) {
		return readBalance(ctx, k.UserID, k.Type)
	}
	bctx, bcancel := context.WithTimeout(ctx, 30*time.Second)
	defer bcancel()
	burst, err := bench.Stampede(bctx, []bench.ReadFunc{read}, hot, d.opts.burst, d.counter)
	if err != nil {
		ph.Burst.Error = err.Error()
		return ph, ctx.Err()
	}
	ph.Burst.Queries, ph.Burst.Wall = burst.Queries, bench.Duration(burst.Wall)
	return ph, nil
}

// groups are the demo's goroutines: --concurrency of them running the
// whole mix (ops), or, with --write-rate, reading only while demoWriters
// more write on a fixed schedule, so that both phases get the same writes
// per second (in a closed loop a phase whose reads are faster also writes
// faster, and its reads then wait on a busier Postgres).
func (d *demo) groups(readBalance func(context.Context, int64, credits.Type) (credits.Balance, error),
	readDef func(context.Context, int64) (workflows.Definition, error)) []bench.Group {
	ops := d.ops(readBalance, readDef)
	if d.opts.writeRate <= 0 {
		return []bench.Group{{Goroutines: d.opts.concurrency, Ops: ops}}
	}
	var reads, writes []bench.Op
	for _, op := range ops {
		if op.Name == opCreditWrite || op.Name == opWorkflowSave {
			writes = append(writes, op)
		} else {
			reads = append(reads, op)
		}
	}
	return []bench.Group{
		{Goroutines: d.opts.concurrency, Ops: reads},
		{Goroutines: demoWriters, Rate: d.opts.writeRate, Ops: writes},
	}
}

// ops is the demo's mix of operations for the engine: Zipf-distributed
// reads of balances and definitions through readBalance and readDef, credit
// adds and deducts and workflow saves through the cached repositories.
func (d *demo) ops(readBalance func(context.Context, int64, credits.Type) (credits.Balance, error),
	readDef func(context.Context, int64) (workflows.Definition, error)) []bench.Op {
	users := func(seed uint64) *bench.Zipf { return bench.NewZipf(d.opts.users, bench.DefaultZipfS, seed) }
	defKeys := func(seed uint64) func() int64 {
		z := bench.NewZipf(len(d.defIDs), bench.DefaultZipfS, seed)
		return func() int64 { return d.defIDs[z.Next()] }
	}
	const reads = 1 - demoCreditWrites - demoWorkflowSaves
	return []bench.Op{
		{Name: opBalanceRead, Weight: reads * demoBalanceReads, Start: func(seed uint64) func(context.Context) error {
			z := users(seed)
			return func(ctx context.Context) error {
				u, t := d.zipfBalance(z)
				_, err := readBalance(ctx, u, t)
				return err
			}
		}},
		{Name: opDefinitionRead, Weight: reads * (1 - demoBalanceReads), Start: func(seed uint64) func(context.Context) error {
			next := defKeys(seed)
			return func(ctx context.Context) error { _, err := readDef(ctx, next()); return err }
		}},
		{Name: opCreditWrite, Weight: demoCreditWrites, Refused: []error{credits.ErrInsufficient},
			Start: func(seed uint64) func(context.Context) error {
				z := users(seed)
				return func(ctx context.Context) error {
					u, t := d.zipfBalance(z)
					ch := credits.Change{UserID: u, Type: t, Amount: 1 + int64(z.IntN(demoMaxChange)), Reason: "demo"}
					var err error
					if z.IntN(2) == 0 {
						_, err = d.credits.Add(ctx, ch)
					} else {
						_, err = d.credits.Deduct(ctx, ch)
					}
					return err
				}
			}},
		// A save that loses the race with another goroutine's save of the
		// same definition (ErrConflict) is refused, not failed.
		{Name: opWorkflowSave, Weight: demoWorkflowSaves, Refused: []error{workflows.ErrConflict},
			Start: func(seed uint64) func(context.Context) error {
				next := defKeys(seed)
				return func(ctx context.Context) error {
					def, err := d.wfStore.Definition(ctx, next())
					if err != nil {
						return err
					}
					def.Spec = json.RawMessage(fmt.Sprintf(`{"steps":[{"action":"enrich"},{"action":"email"}],"rev":%d}`, d.saves.Add(1)))
					_, err = d.workflows.Save(ctx, def)
					return err
				}
			}},
	}
}

// zipfBalance draws a seeded balance from z: the user by Zipf, the credit
// type uniformly.
func (d *demo) zipfBalance(z *bench.Zipf) (int64, credits.Type) {
	return d.firstUser + int64(z.Next()), demoCreditTypes[z.IntN(len(demoCreditTypes))]
}

// setRatios sets the hit and fallback ratios from the reads and the
// cache's counters. Hits per read, not per lookup: a read that fell back to
// Postgres because Redis failed is no hit, so the ratio agrees with the
// SELECTs per read. (A read cut short by the phase's end may have counted a
// hit: hence the bound.)
func (ph *demoPhase) setRatios() {
	if ph.Reads > 0 {
		ph.HitRatio = min(float64(ph.Cache.Hits)/float64(ph.Reads), 1)
		ph.FallbackRatio = min(float64(ph.Cache.Fallbacks)/float64(ph.Reads), 1)
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
