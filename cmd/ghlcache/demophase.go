package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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
	step := func() {
		n := int(saved.Add(1))
		d.bar.set(demoSeedTicks/2+n*demoSeedTicks/2/len(d.defIDs),
			fmt.Sprintf("seeding workflow definitions %d/%d", n, len(d.defIDs)))
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < len(d.defIDs); i += 8 {
				def, err := store.Save(ctx, workflows.Definition{
					Name: fmt.Sprintf("demo workflow %d", i+1),
					Spec: json.RawMessage(fmt.Sprintf(`{"steps":[{"action":"enrich"},{"action":"email","template":"t%d"}],"rev":0}`, i)),
				})
				if err != nil {
					errs[w] = err
					return
				}
				d.defIDs[i] = def.ID
				step()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// warm reads every balance and definition once through the cached
// repositories.
func (d *demo) warm(ctx context.Context) (*demoWarmup, error) {
	start := time.Now()
	const workers = 8
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < d.opts.users && errs[w] == nil; i += workers {
				for _, t := range demoCreditTypes {
					if _, err := d.credits.Balance(ctx, d.firstUser+int64(i), t); err != nil {
						errs[w] = err
						return
					}
				}
			}
			for i := w; i < len(d.defIDs); i += workers {
				if _, err := d.workflows.Definition(ctx, d.defIDs[i]); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	keys := d.opts.users*len(demoCreditTypes) + len(d.defIDs)
	return &demoWarmup{Keys: keys, Wall: bench.Duration(time.Since(start).Round(time.Millisecond))}, nil
}

// phaseWorker is one goroutine's tallies.
type phaseWorker struct {
	hist                                           bench.Histogram
	reads, writes, insufficient, saves, errorCount int64
	firstErr                                       error
}

// phase runs the workload for the phase duration, reading through the
// cached repositories when cached is set (else through the stores), then
// the cold-key burst. Failed operations are counted in the phase; its error
// is ctx's only.
func (d *demo) phase(ctx context.Context, name string, cached bool, barBase int) (demoPhase, error) {
	bar := d.bar
	ph := demoPhase{Name: name}
	readBalance := func(ctx context.Context, u int64, t credits.Type) (credits.Balance, error) {
		return d.creditStore.Balance(ctx, u, t)
	}
	readDef := d.wfStore.Definition
	if cached {
		readBalance, readDef = d.credits.Balance, d.workflows.Definition
	}

	runCtx, cancel := context.WithTimeout(ctx, d.opts.duration)
	defer cancel()
	stats0, queries0, meter := d.cache.Stats(), d.counter.Counts(), bench.StartCPU()
	workers := make([]phaseWorker, d.opts.concurrency)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() { d.work(runCtx, &workers[g], uint64(g)+uint64(barBase)*1_000_003, readBalance, readDef) })
	}
	// The progress bar follows the clock.
	tick := time.NewTicker(d.opts.duration / demoProgressTicks)
	start := time.Now()
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case <-tick.C:
			bar.set(barBase+int(time.Since(start)*demoProgressTicks/d.opts.duration), name)
		}
	}
	tick.Stop()
	wg.Wait()
	usage := meter.Stop()
	stats, queries := d.cache.Stats(), d.counter.Counts().Sub(queries0)
	if err := ctx.Err(); err != nil {
		return ph, err
	}

	var hist bench.Histogram
	var firstErr error
	for i := range workers {
		w := &workers[i]
		hist.Merge(&w.hist)
		ph.Reads += w.reads
		ph.CreditWrites += w.writes
		ph.InsufficientDeducts += w.insufficient
		ph.WorkflowSaves += w.saves
		ph.Errors += w.errorCount
		if firstErr == nil {
			firstErr = w.firstErr
		}
	}
	if firstErr != nil {
		ph.FirstError = firstErr.Error()
	}
	ph.ReadsPerSec = float64(ph.Reads) / usage.Wall.Seconds()
	ph.P50, ph.P99, ph.P999 = bench.Duration(hist.Quantile(0.5)), bench.Duration(hist.Quantile(0.99)), bench.Duration(hist.Quantile(0.999))
	ph.ReadQueries = queries.Balances + queries.Definitions
	ph.Avoided = max(ph.Reads-ph.ReadQueries, 0)
	ph.TotalQueries = queries.Total
	ph.Cache = statsDelta(stats, stats0)
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

// work is one goroutine of a phase.
func (d *demo) work(ctx context.Context, w *phaseWorker, seed uint64,
	readBalance func(context.Context, int64, credits.Type) (credits.Balance, error),
	readDef func(context.Context, int64) (workflows.Definition, error)) {
	users := bench.NewZipf(d.opts.users, bench.DefaultZipfS, seed+1)
	defs := bench.NewZipf(len(d.defIDs), bench.DefaultZipfS, seed+2)
	fail := func(err error) {
		if ctx.Err() != nil {
			return // the phase ended mid-call
		}
		w.errorCount++
		if w.firstErr == nil {
			w.firstErr = err
		}
	}
	for ctx.Err() == nil && w.errorCount < 100 {
		x := users.Float64()
		user := d.firstUser + int64(users.Next())
		typ := demoCreditTypes[users.IntN(len(demoCreditTypes))]
		switch {
		case x < demoCreditWrites:
			ch := credits.Change{UserID: user, Type: typ, Amount: 1 + int64(users.IntN(demoMaxChange)), Reason: "demo"}
			var err error
			if users.IntN(2) == 0 {
				_, err = d.credits.Add(ctx, ch)
			} else {
				_, err = d.credits.Deduct(ctx, ch)
			}
			switch {
			case errors.Is(err, credits.ErrInsufficient):
				w.insufficient++
			case err != nil:
				fail(err)
			default:
				w.writes++
			}
		case x < demoCreditWrites+demoWorkflowSaves:
			id := d.defIDs[defs.Next()]
			def, err := d.wfStore.Definition(ctx, id)
			if err != nil {
				fail(err)
				continue
			}
			def.Spec = json.RawMessage(fmt.Sprintf(`{"steps":[{"action":"enrich"},{"action":"email"}],"rev":%d}`, d.saves.Add(1)))
			switch _, err := d.workflows.Save(ctx, def); {
			case errors.Is(err, workflows.ErrConflict): // another goroutine saved it first
			case err != nil:
				fail(err)
			default:
				w.saves++
			}
		default:
			start := time.Now()
			var err error
			if users.Float64() < demoBalanceReads {
				_, err = readBalance(ctx, user, typ)
			} else {
				_, err = readDef(ctx, d.defIDs[defs.Next()])
			}
			if err != nil {
				fail(err)
				continue
			}
			w.hist.Record(time.Since(start))
			w.reads++
		}
	}
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
