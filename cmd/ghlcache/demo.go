package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/workflows"
)

var demoCommand = &command{
	name:    "demo",
	summary: "show what ghlcache does: the same workload without and with the cache",
	help: `Create (if missing) and migrate a demo database on the server of
--database-url (see --db-name), seed users with credits of three types and a
set of workflow definitions, and run the same workload twice, each phase for
--duration: Zipf-distributed reads of balances (70 %) and definitions (30 %),
about 5 % credit adds and deducts, occasional workflow saves, and then a
burst of --burst goroutines reading one hot key that a write has just
invalidated.

The baseline phase reads through the plain Postgres stores, the cached phase
through the cached repositories; writes always go through the cached
repositories, so the cache stays correct in both. The report compares
throughput, latency, Postgres queries and CPU, shows the cache's counters,
and ends with a consistency check (every cached balance equals Postgres's):
the command fails when that check fails.

Keys live under --prefix (deleted at the start). With --no-cache (or a
REDIS_URL set but empty, the library's no-cache mode) the cached phase runs the cached repositories in no-cache mode (every read goes to
Postgres, still one load per key at a time).`,
	flags: func(fs *flag.FlagSet) runFunc {
		var o demoOptions
		fs.StringVar(&o.dbName, "db-name", defaultDemoDatabase, demoDatabaseHelp)
		fs.StringVar(&o.prefix, "prefix", "ghl:demo:", "Redis key prefix of the demo")
		fs.DurationVar(&o.duration, "duration", 8*time.Second, "length of each phase")
		fs.IntVar(&o.users, "users", 2000, "users to seed (each with "+fmt.Sprint(len(demoCreditTypes))+" credit types)")
		fs.IntVar(&o.workflows, "workflows", 200, "workflow definitions to seed")
		fs.IntVar(&o.concurrency, "concurrency", 16, "goroutines of the workload")
		fs.IntVar(&o.burst, "burst", 1000, "goroutines of the cold-key burst")
		fs.BoolVar(&o.json, "json", false, "print the report as JSON")
		return func(ctx context.Context, e *env, _ []string) error {
			return runDemo(ctx, e, o)
		}
	},
}

type demoOptions struct {
	dbName, prefix     string
	duration           time.Duration
	users, workflows   int
	concurrency, burst int
	json               bool
}

// demoCreditTypes are the credit types every demo user has.
var demoCreditTypes = []credits.Type{"enrichment", "email", "sms"}

// The demo workload's mix.
const (
	demoCreditWrites   = 0.05  // adds and deducts
	demoWorkflowSaves  = 0.002 // saves of a definition
	demoBalanceReads   = 0.7   // of the reads; the rest are definitions
	demoMaxChange      = 50    // credits per add or deduct
	demoProgressTicks  = 100   // steps of a phase's progress bar
	demoQuiesceTimeout = 10 * time.Second
)

// demoReport is what the demo measured; --json prints it as is.
type demoReport struct {
	Database string `json:"database"` // redacted
	Mode     string `json:"mode"`     // "redis" or "no-cache"
	// NoCacheReason says why the mode is no-cache: "--no-cache", "REDIS_URL
	// is empty" or "--redis-url is empty".
	NoCacheReason string          `json:"no_cache_reason,omitempty"`
	Prefix        string          `json:"prefix"`
	Users         int             `json:"users"`
	CreditTypes   []credits.Type  `json:"credit_types"`
	Workflows     int             `json:"workflows"`
	Concurrency   int             `json:"concurrency"`
	Phase         bench.Duration  `json:"phase_duration"`
	Seeding       bench.Duration  `json:"seeding"`
	Baseline      demoPhase       `json:"baseline"`
	Cached        demoPhase       `json:"cached"`
	Consistency   demoConsistency `json:"consistency"`
	Summary       []string        `json:"summary"`
	Elapsed       bench.Duration  `json:"elapsed"`
}

// demoPhase is one phase's figures.
type demoPhase struct {
	Name                string         `json:"name"`
	Reads               int64          `json:"reads"`
	ReadsPerSec         float64        `json:"reads_per_sec"`
	P50                 bench.Duration `json:"p50"`
	P99                 bench.Duration `json:"p99"`
	P999                bench.Duration `json:"p999"`
	CreditWrites        int64          `json:"credit_writes"`
	InsufficientDeducts int64          `json:"insufficient_deducts"`
	WorkflowSaves       int64          `json:"workflow_saves"`
	Errors              int64          `json:"errors"`
	// ReadQueries are the balance and definition SELECTs Postgres received
	// for the phase's reads; Avoided are reads that sent none.
	ReadQueries  int64   `json:"read_queries"`
	Avoided      int64   `json:"queries_avoided"`
	TotalQueries int64   `json:"total_queries"` // every statement, writes and outbox included
	HitRatio     float64 `json:"hit_ratio"`     // cache hits / (hits + misses); 0 without cache
	// CPUPerRead is this process's CPU time per read (getrusage);
	// MachineCPUPerRead the whole machine's (Postgres and Redis included,
	// and anything else running), 0 where unknown.
	CPUPerRead        bench.Duration `json:"cpu_per_read"`
	MachineCPUPerRead bench.Duration `json:"machine_cpu_per_read"`
	Cache             cacheCounters  `json:"cache"` // the cache's counters during the phase
	Burst             demoBurst      `json:"burst"`
	// Warmup is the unmeasured pass before the cached phase that reads
	// every key once, so that the phase shows a running service's steady
	// state rather than its first minutes.
	Warmup *demoWarmup `json:"warmup,omitempty"`
}

// demoWarmup is the pass that fills the cache before the cached phase.
type demoWarmup struct {
	Keys int            `json:"keys"`
	Wall bench.Duration `json:"wall"`
}

// demoBurst is the cold-key burst at the end of a phase.
type demoBurst struct {
	Goroutines int            `json:"goroutines"`
	Queries    int64          `json:"queries"` // balance SELECTs for the burst
	Wall       bench.Duration `json:"wall"`
}

// demoConsistency is the final check.
type demoConsistency struct {
	BalancesChecked    int      `json:"balances_checked"`
	BalancesCached     int      `json:"balances_cached"`
	DefinitionsCached  int      `json:"definitions_cached"`
	Mismatches         int      `json:"mismatches"`
	Examples           []string `json:"examples,omitempty"`
	Passed             bool     `json:"passed"`
	OutboxDepthAtCheck int64    `json:"outbox_depth"`
}

func runDemo(ctx context.Context, e *env, o demoOptions) error {
	const path = "ghlcache demo"
	if o.duration <= 0 {
		return usagef(path, "--duration must be positive")
	}
	if o.users < 1 || o.workflows < 1 || o.concurrency < 1 || o.burst < 1 {
		return usagef(path, "--users, --workflows, --concurrency and --burst must be at least 1")
	}
	if o.prefix == "" {
		return usagef(path, "--prefix must not be empty")
	}
	begin := time.Now()
	logger := slog.New(slog.DiscardHandler)
	rep := &demoReport{
		Mode: "redis", Prefix: o.prefix, Users: o.users, CreditTypes: demoCreditTypes, Workflows: o.workflows,
		Concurrency: o.concurrency, Phase: bench.Duration(o.duration),
	}

	// The cache first: a Redis that is down fails here, before any seeding.
	ccfg := &cachelayer.Config{Prefix: o.prefix, Logger: logger}
	var cache *cachelayer.Cache
	if rep.NoCacheReason = e.noCache(); rep.NoCacheReason != "" {
		rep.Mode = "no-cache"
		cache = cachelayer.New(nil, ccfg)
	} else {
		raw := e.redisURL()
		var err error
		if cache, err = cachelayer.Open(ctx, raw, ccfg); err != nil {
			return wrapURL(raw, err, "redis")
		}
		if h := cache.Health(ctx); !h.Healthy {
			_ = cache.Close()
			return fmt.Errorf("redis %s is down (%s); start it, or run the demo with --no-cache",
				redactURL(raw), oneLine(scrub(h.Err, raw)))
		}
	}
	defer cache.Close()

	counter := &bench.QueryCounter{}
	pool, dbURL, err := openDemoDatabase(ctx, e, o.dbName, func(c *pgxpool.Config) { c.ConnConfig.Tracer = counter })
	if err != nil {
		return err
	}
	defer pool.Close()
	rep.Database = redactURL(dbURL)
	for _, p := range []string{"credits:", "workflow:"} {
		if _, err := cache.DeletePrefix(ctx, p); err != nil {
			return fmt.Errorf("demo: clear %s%s: %w", o.prefix, p, err)
		}
	}

	// Seed.
	seedStart := time.Now()
	d := &demo{opts: o, pool: pool, cache: cache, counter: counter, rep: rep}
	if err := d.seed(ctx); err != nil {
		return wrapURL(dbURL, err, "demo: seed")
	}
	rep.Seeding = bench.Duration(time.Since(seedStart).Round(time.Millisecond))
	d.creditStore, d.wfStore = credits.NewStore(pool), workflows.NewStore(pool)
	d.credits = credits.NewCached(d.creditStore, cache, &credits.CachedConfig{Logger: logger})
	defer d.credits.Close()
	d.workflows = workflows.NewCached(d.wfStore, cache, &workflows.CachedConfig{Logger: logger})
	defer d.workflows.Close()

	bar := newProgress(e.stderr, 2*demoProgressTicks+1, "baseline")
	rep.Baseline, err = d.phase(ctx, "baseline (Postgres)", false, bar, 0)
	if err != nil {
		bar.finish()
		return wrapURL(dbURL, err, "demo: baseline phase")
	}
	cachedName := "cached (ghlcache)"
	if rep.Mode == "no-cache" {
		cachedName = "cached (no-cache mode)"
	}
	var warmup *demoWarmup
	if rep.Mode != "no-cache" {
		bar.set(demoProgressTicks, "warming the cache")
		if warmup, err = d.warm(ctx); err != nil {
			bar.finish()
			return wrapURL(dbURL, err, "demo: warm-up")
		}
	}
	rep.Cached, err = d.phase(ctx, cachedName, true, bar, demoProgressTicks)
	rep.Cached.Warmup = warmup
	if err != nil {
		bar.finish()
		return wrapURL(dbURL, err, "demo: cached phase")
	}
	bar.set(2*demoProgressTicks, "consistency check")
	rep.Consistency, err = d.check(ctx)
	bar.finish()
	if err != nil {
		return wrapURL(dbURL, err, "demo: consistency check")
	}
	rep.Summary = demoSummary(rep)
	rep.Elapsed = bench.Duration(time.Since(begin).Round(time.Millisecond))

	if o.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := printDemo(e.stdout, rep); err != nil {
		return err
	}
	if !rep.Consistency.Passed {
		return fmt.Errorf("demo: consistency check failed: %d cached value(s) differ from Postgres", rep.Consistency.Mismatches)
	}
	return nil
}

// demo holds one run's state.
type demo struct {
	opts    demoOptions
	pool    *pgxpool.Pool
	cache   *cachelayer.Cache
	counter *bench.QueryCounter
	rep     *demoReport

	firstUser   int64
	defIDs      []int64
	creditStore *credits.Store
	wfStore     *workflows.Store
	credits     *credits.Cached
	workflows   *workflows.Cached
	saves       atomic.Int64 // workflow saves, for distinct specs
}

// seed creates the users' balances (one statement) and the workflow
// definitions (through the store, a few at a time).
func (d *demo) seed(ctx context.Context) error {
	first, err := bench.SeedBalances(ctx, d.pool, d.opts.users, demoCreditTypes)
	if err != nil {
		return err
	}
	d.firstUser = first
	store := workflows.NewStore(d.pool)
	d.defIDs = make([]int64, d.opts.workflows)
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
// the cold-key burst.
func (d *demo) phase(ctx context.Context, name string, cached bool, bar *progress, barBase int) (demoPhase, error) {
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
	if ph.Errors > 0 {
		return ph, fmt.Errorf("%d operations failed, the first: %w", ph.Errors, firstErr)
	}
	ph.ReadsPerSec = float64(ph.Reads) / usage.Wall.Seconds()
	ph.P50, ph.P99, ph.P999 = bench.Duration(hist.Quantile(0.5)), bench.Duration(hist.Quantile(0.99)), bench.Duration(hist.Quantile(0.999))
	ph.ReadQueries = queries.Balances + queries.Definitions
	ph.Avoided = max(ph.Reads-ph.ReadQueries, 0)
	ph.TotalQueries = queries.Total
	ph.Cache = statsDelta(stats, stats0)
	if lookups := ph.Cache.Hits + ph.Cache.Misses; lookups > 0 {
		ph.HitRatio = float64(ph.Cache.Hits) / float64(lookups)
	}
	if ph.Reads > 0 {
		ph.CPUPerRead = bench.Duration(usage.Process / time.Duration(ph.Reads))
		ph.MachineCPUPerRead = bench.Duration(usage.Machine / time.Duration(ph.Reads))
	}

	// The burst: a write invalidates the hottest balance, then many
	// goroutines read it at once.
	hot := bench.Key{UserID: d.firstUser, Type: demoCreditTypes[0]}
	if _, err := d.credits.Add(ctx, credits.Change{UserID: hot.UserID, Type: hot.Type, Amount: 1, Reason: "demo burst"}); err != nil {
		return ph, err
	}
	read := func(ctx context.Context, k bench.Key) (credits.Balance, error) {
		return readBalance(ctx, k.UserID, k.Type)
	}
	bctx, bcancel := context.WithTimeout(ctx, 30*time.Second)
	defer bcancel()
	burst, err := bench.Stampede(bctx, []bench.ReadFunc{read}, hot, d.opts.burst, d.counter)
	if err != nil {
		return ph, err
	}
	ph.Burst = demoBurst{Goroutines: d.opts.burst, Queries: burst.Queries, Wall: bench.Duration(burst.Wall)}
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

// check waits until every invalidation has reached Redis, then compares
// every cached balance and definition with Postgres.
func (d *demo) check(ctx context.Context) (demoConsistency, error) {
	var c demoConsistency
	qctx, cancel := context.WithTimeout(ctx, demoQuiesceTimeout)
	defer cancel()
	// In no-cache mode there is nothing to wait for: no key was cached, and
	// the outbox rows stay for an instance with Redis to sweep.
	for d.cache.Enabled() {
		// While the breaker is open a sweep fails; keep trying until the
		// deadline (the breaker's probe is one of these calls).
		err := errors.Join(d.credits.Sweep(qctx), d.workflows.Sweep(qctx))
		if err != nil && !errors.Is(err, cachelayer.ErrUnavailable) {
			return c, err
		}
		cs, err1 := d.credits.OutboxStats(qctx)
		ws, err2 := d.workflows.OutboxStats(qctx)
		if err := errors.Join(err1, err2); err != nil {
			return c, err
		}
		c.OutboxDepthAtCheck = cs.Depth + ws.Depth
		if c.OutboxDepthAtCheck == 0 {
			break
		}
		select {
		case <-qctx.Done():
			return c, fmt.Errorf("outbox still holds %d invalidations: %w", c.OutboxDepthAtCheck, qctx.Err())
		case <-time.After(20 * time.Millisecond): // poll, bounded by qctx
		}
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	mismatch := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		c.Mismatches++
		if len(c.Examples) < 5 {
			c.Examples = append(c.Examples, fmt.Sprintf(format, args...))
		}
	}
	const workers = 8
	for w := range workers {
		wg.Go(func() {
			var checked, cachedBal, cachedDef int
			defer func() {
				mu.Lock()
				c.BalancesChecked += checked
				c.BalancesCached += cachedBal
				c.DefinitionsCached += cachedDef
				mu.Unlock()
			}()
			fail := func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
			for i := w; i < d.opts.users; i += workers {
				for _, t := range demoCreditTypes {
					u := d.firstUser + int64(i)
					var got credits.Balance
					found, err := getRetrying(ctx, d.cache, credits.Key(u, t), &got)
					if err != nil {
						fail(err)
						return
					}
					checked++
					if !found {
						continue
					}
					cachedBal++
					want, err := d.creditStore.Balance(ctx, u, t)
					if err != nil {
						fail(err)
						return
					}
					if got.Amount != want.Amount || got.Version != want.Version {
						mismatch("%s: cached %d (version %d), Postgres %d (version %d)",
							credits.Key(u, t), got.Amount, got.Version, want.Amount, want.Version)
					}
				}
			}
			for i := w; i < len(d.defIDs); i += workers {
				var got workflows.Definition
				found, err := getRetrying(ctx, d.cache, workflows.Key(d.defIDs[i]), &got)
				if errors.Is(err, cachelayer.ErrNotFound) {
					continue
				}
				if err != nil {
					fail(err)
					return
				}
				if !found {
					continue
				}
				cachedDef++
				want, err := d.wfStore.Definition(ctx, d.defIDs[i])
				if err != nil {
					fail(err)
					return
				}
				if got.Version != want.Version {
					mismatch("%s: cached version %d, Postgres version %d", workflows.Key(d.defIDs[i]), got.Version, want.Version)
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	c.Passed = c.Mismatches == 0
	return c, nil
}

// cacheCounters are cachelayer.Stats counters, with JSON names.
type cacheCounters struct {
	Hits                 int64 `json:"hits"`
	Misses               int64 `json:"misses"`
	Loads                int64 `json:"loads"`
	LoadsShared          int64 `json:"loads_shared"`
	LeaseWaits           int64 `json:"lease_waits"`
	StaleFillsRejected   int64 `json:"stale_fills_rejected"`
	Corrupt              int64 `json:"corrupt"`
	Oversize             int64 `json:"oversize"`
	RedisErrors          int64 `json:"redis_errors"`
	Fallbacks            int64 `json:"fallbacks"`
	Invalidations        int64 `json:"invalidations"`
	InvalidationFailures int64 `json:"invalidation_failures"`
	Recoveries           int64 `json:"recoveries"`
}

// getRetrying is cache.Get that waits out an open breaker (a Redis call
// slower than the cache's timeout on a loaded machine opens it), for up to
// demoQuiesceTimeout.
func getRetrying(ctx context.Context, c *cachelayer.Cache, key string, dst any) (bool, error) {
	deadline := time.Now().Add(demoQuiesceTimeout)
	for {
		found, err := c.Get(ctx, key, dst)
		if !errors.Is(err, cachelayer.ErrUnavailable) || time.Now().After(deadline) {
			return found, err
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(50 * time.Millisecond): // the breaker's cooldown is 1 s
		}
	}
}

// statsDelta returns the counters of a since b.
func statsDelta(a, b cachelayer.Stats) cacheCounters {
	return cacheCounters{
		Hits:                 a.Hits - b.Hits,
		Misses:               a.Misses - b.Misses,
		Loads:                a.Loads - b.Loads,
		LoadsShared:          a.LoadsShared - b.LoadsShared,
		LeaseWaits:           a.LeaseWaits - b.LeaseWaits,
		StaleFillsRejected:   a.StaleFillsRejected - b.StaleFillsRejected,
		Corrupt:              a.Corrupt - b.Corrupt,
		Oversize:             a.Oversize - b.Oversize,
		RedisErrors:          a.RedisErrors - b.RedisErrors,
		Fallbacks:            a.Fallbacks - b.Fallbacks,
		Invalidations:        a.Invalidations - b.Invalidations,
		InvalidationFailures: a.InvalidationFailures - b.InvalidationFailures,
		Recoveries:           a.Recoveries - b.Recoveries,
	}
}

// demoSummary says in words where the win is, and where it is not.
func demoSummary(r *demoReport) []string {
	b, c := r.Baseline, r.Cached
	var out []string
	if r.Mode == "no-cache" {
		out = append(out, "No-cache mode: every read of the cached phase went to Postgres, as in the baseline; "+
			"only concurrent reads of one key were merged into one query.")
	}
	if b.P50 > 0 && c.P50 > 0 {
		ratio := float64(b.P50) / float64(c.P50)
		switch {
		case ratio < 1.25 && ratio > 0.8:
			out = append(out, fmt.Sprintf("Latency: a cached read took %s at the median against %s from Postgres. On loopback a Redis GET "+
				"costs about as much as a primary-key SELECT, so reads are not much faster here; the gap grows with a network hop or a busy database.",
				formatLatency(time.Duration(c.P50)), formatLatency(time.Duration(b.P50))))
		case ratio >= 1.25:
			out = append(out, fmt.Sprintf("Latency: a cached read took %s at the median against %s from Postgres (%.1f× faster); "+
				"on loopback most of that is Postgres being busier, not Redis being far faster.",
				formatLatency(time.Duration(c.P50)), formatLatency(time.Duration(b.P50)), ratio))
		default:
			out = append(out, fmt.Sprintf("Latency: a cached read took %s at the median, slower than Postgres's %s on this machine: "+
				"the cache does not make reads faster here.", formatLatency(time.Duration(c.P50)), formatLatency(time.Duration(b.P50))))
		}
	}
	if c.Reads > 0 && r.Mode != "no-cache" {
		out = append(out, fmt.Sprintf("Postgres load, the real win: %s reads sent %s SELECTs (%.1f%% avoided), against one per read in the baseline.",
			formatRate(float64(c.Reads)), formatRate(float64(c.ReadQueries)), 100*float64(c.Avoided)/float64(c.Reads)))
	}
	if b.MachineCPUPerRead > 0 && c.MachineCPUPerRead > 0 {
		out = append(out, fmt.Sprintf("CPU: the whole machine spent %s per read without the cache and %s with it (this process alone: %s and %s).",
			formatLatency(time.Duration(b.MachineCPUPerRead)), formatLatency(time.Duration(c.MachineCPUPerRead)),
			formatLatency(time.Duration(b.CPUPerRead)), formatLatency(time.Duration(c.CPUPerRead))))
	}
	out = append(out, fmt.Sprintf("Stampede: %d goroutines reading a hot key that a write had just invalidated cost %d SELECT(s) with the cache, %d without.",
		c.Burst.Goroutines, c.Burst.Queries, b.Burst.Queries))
	if r.Consistency.Passed {
		out = append(out, fmt.Sprintf("Consistency: all %d cached balances and %d cached definitions equal Postgres after %d writes.",
			r.Consistency.BalancesCached, r.Consistency.DefinitionsCached, b.CreditWrites+c.CreditWrites+b.WorkflowSaves+c.WorkflowSaves))
	} else {
		out = append(out, fmt.Sprintf("Consistency: FAILED, %d cached values differ from Postgres.", r.Consistency.Mismatches))
	}
	return out
}

// printDemo writes the report as a table and the summary.
func printDemo(w io.Writer, r *demoReport) error {
	fmt.Fprintf(w, "ghlcache demo — %d users × %d credit types, %d workflow definitions, %d goroutines, %s per phase\n",
		r.Users, len(r.CreditTypes), r.Workflows, r.Concurrency, r.Phase)
	mode := r.Mode
	if r.NoCacheReason != "" {
		mode += ", " + r.NoCacheReason
	}
	fmt.Fprintf(w, "database %s, Redis keys under %q (mode: %s), seeded in %s\n\n", r.Database, r.Prefix, mode, r.Seeding)
	b, c := r.Baseline, r.Cached
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\t%s\t%s\n", b.Name, c.Name)
	row := func(label string, f func(p demoPhase) string) { fmt.Fprintf(tw, "%s\t%s\t%s\n", label, f(b), f(c)) }
	lat := func(d bench.Duration) string { return formatLatency(time.Duration(d)) }
	row("reads/s", func(p demoPhase) string { return formatRate(p.ReadsPerSec) })
	row("read latency p50", func(p demoPhase) string { return lat(p.P50) })
	row("read latency p99", func(p demoPhase) string { return lat(p.P99) })
	row("read latency p99.9", func(p demoPhase) string { return lat(p.P999) })
	row("cache hit ratio", func(p demoPhase) string {
		if p.Cache.Hits+p.Cache.Misses == 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f%%", 100*p.HitRatio)
	})
	row("reads", func(p demoPhase) string { return formatRate(float64(p.Reads)) })
	row("Postgres SELECTs for reads", func(p demoPhase) string {
		return fmt.Sprintf("%s (%.3f per read)", formatRate(float64(p.ReadQueries)), float64(p.ReadQueries)/float64(max(p.Reads, 1)))
	})
	row("Postgres queries avoided", func(p demoPhase) string { return formatRate(float64(p.Avoided)) })
	row("Postgres statements, all", func(p demoPhase) string { return formatRate(float64(p.TotalQueries)) })
	row("CPU per read, this process", func(p demoPhase) string { return lat(p.CPUPerRead) })
	row("CPU per read, whole machine", func(p demoPhase) string {
		if p.MachineCPUPerRead == 0 {
			return "—"
		}
		return lat(p.MachineCPUPerRead)
	})
	row("credit adds/deducts", func(p demoPhase) string {
		return fmt.Sprintf("%s (+%d refused: insufficient)", formatRate(float64(p.CreditWrites)), p.InsufficientDeducts)
	})
	row("workflow saves", func(p demoPhase) string { return formatRate(float64(p.WorkflowSaves)) })
	row("loads (cache misses loaded)", func(p demoPhase) string { return formatRate(float64(p.Cache.Loads)) })
	row("loads shared (singleflight)", func(p demoPhase) string { return formatRate(float64(p.Cache.LoadsShared)) })
	row("stale fills rejected", func(p demoPhase) string { return formatRate(float64(p.Cache.StaleFillsRejected)) })
	row("invalidations", func(p demoPhase) string { return formatRate(float64(p.Cache.Invalidations)) })
	row(fmt.Sprintf("burst: %d readers, SELECTs", c.Burst.Goroutines), func(p demoPhase) string {
		return fmt.Sprintf("%d (in %s)", p.Burst.Queries, lat(p.Burst.Wall))
	})
	if err := tw.Flush(); err != nil {
		return err
	}
	if wu := c.Warmup; wu != nil {
		fmt.Fprintf(w, "(before the cached phase, %d keys were read once to warm the cache, in %s; not measured)\n", wu.Keys, wu.Wall)
	}
	cs := r.Consistency
	verdict := "passed"
	if !cs.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "\nconsistency check %s: %d balances checked, %d cached, %d cached definitions, %d mismatches\n",
		verdict, cs.BalancesChecked, cs.BalancesCached, cs.DefinitionsCached, cs.Mismatches)
	for _, ex := range cs.Examples {
		fmt.Fprintf(w, "  %s\n", ex)
	}
	fmt.Fprintln(w)
	for _, s := range r.Summary {
		fmt.Fprintf(w, "%s\n", wrapText(s, 78, "  "))
	}
	fmt.Fprintf(w, "\ntook %s\n", r.Elapsed)
	return nil
}

// wrapText wraps s at width, indenting continuation lines.
func wrapText(s string, width int, indent string) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(s) {
		if i > 0 {
			if line+1+len(word) > width {
				b.WriteString("\n" + indent)
				line = len(indent)
			} else {
				b.WriteByte(' ')
				line++
			}
		}
		b.WriteString(word)
		line += len(word)
	}
	return b.String()
}
