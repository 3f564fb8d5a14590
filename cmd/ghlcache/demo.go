package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/redact"
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
and ends with a consistency check (every cached balance equals Postgres's).
Once seeded, the demo always prints its report; it then exits with status
1 when an operation failed, when the check found a mismatch, or when it
could not verify the cache (Redis unreachable): outages (reads that fell
back to Postgres, breaker openings, invalidations that did not reach Redis)
are rows of the report.

Keys live under --prefix (deleted at the start). With --no-cache (or a
REDIS_URL set but empty, the library's no-cache mode) the cached phase runs
the cached repositories in no-cache mode (every read goes to Postgres, still
one load per key at a time).

When neither --database-url/DATABASE_URL nor --redis-url/REDIS_URL names a
server and nothing answers at the default address, the demo starts what is
missing in Docker (testcontainers-go: postgres:15-alpine, redis:7.0-alpine),
says so, and removes the containers at the end.`,
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
		fs.Float64Var(&o.writeRate, "write-rate", 0, "writes per second, the same in both phases: credit adds, deducts and definition saves start on a fixed schedule "+
			"from writers of their own while --concurrency goroutines only read (0: every goroutine writes 5% of its operations, so a faster phase also writes more)")
		fs.BoolVar(&o.noNear, "no-near", false, "cached phase: keep workflow definitions out of the near tier (workflows.CachedConfig.NoNearCache), to compare")
		fs.BoolVar(&o.writeThrough, "write-through", false, "cached phase: a change stores the new balance over an older cached one (credits.CachedConfig.WriteThrough) instead of deleting it")
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
	writeRate          float64 // writes per second from demoWriters paced goroutines; 0: the mix's share
	writeThrough       bool
	noNear             bool
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
	demoSeedTicks      = 20    // steps of seeding on the progress bar
	demoQuiesceTimeout = 10 * time.Second
	demoWriters        = 8 // goroutines of the paced writes (--write-rate)
)

// The stages at which the demo calls env.demoHook.
const (
	demoStageSeeded  = "seeded"
	demoStageWarmed  = "warmed" // before the cached phase
	demoStageChecked = "checked"
)

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
	if o.writeRate < 0 || math.IsNaN(o.writeRate) || math.IsInf(o.writeRate, 0) {
		return usagef(path, "--write-rate must be a number of writes per second, 0 or more")
	}
	begin := time.Now()
	stopServices, err := demoServices(ctx, e)
	if err != nil {
		return err
	}
	if stopServices != nil {
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), containerStopTimeout)
			defer cancel()
			if err := stopServices(sctx); err != nil {
				fmt.Fprintf(e.stderr, "ghlcache demo: remove containers: %s\n", oneLine(err.Error()))
				return
			}
			fmt.Fprintln(e.stderr, "ghlcache demo: removed the containers it started")
		}()
	}
	logger := slog.New(slog.DiscardHandler)
	rep := &demoReport{
		Mode: "redis", Prefix: o.prefix, Users: o.users, CreditTypes: demoCreditTypes, Workflows: o.workflows,
		Concurrency: o.concurrency, Phase: bench.Duration(o.duration), WriteRate: o.writeRate,
	}
	hook := func(stage string) {
		if e.demoHook != nil {
			e.demoHook(stage)
		}
	}
	// A progress bar on a terminal's stderr from the first step (creating
	// the database and seeding take a while on a first run); none with
	// --json.
	bar := &progress{}
	if !o.json {
		bar = e.newProgress(demoSeedTicks+2*demoProgressTicks+1, "connecting")
	}
	defer bar.finish()

	// The cache first: a Redis that is down fails here, before any seeding.
	ccfg := &cachelayer.Config{Prefix: o.prefix, Logger: logger}
	var cache *cachelayer.Cache
	redisURL := e.redisURL()
	if rep.NoCacheReason = e.noCache(); rep.NoCacheReason != "" {
		rep.Mode = "no-cache"
		cache = cachelayer.New(nil, ccfg)
	} else {
		if cache, err = cachelayer.Open(ctx, redisURL, ccfg); err != nil {
			return redact.Wrap(redisURL, err, "redis")
		}
		if h := cache.Health(ctx); !h.Healthy {
			_ = cache.Close()
			return fmt.Errorf("redis %s is down (%s); start it, or run the demo with --no-cache",
				redact.URL(redisURL), oneLine(redact.String(h.Err, redisURL)))
		}
	}
	defer cache.Close()

	bar.set(0, "creating and migrating the demo database")
	counter := &bench.QueryCounter{}
	pool, dbURL, err := openDemoDatabase(ctx, e, o.dbName, func(c *pgxpool.Config) { c.ConnConfig.Tracer = counter })
	if err != nil {
		return err
	}
	defer pool.Close()
	rep.Database = redact.URL(dbURL)
	for _, p := range []string{"credits:", "workflow:"} {
		if _, err := cache.DeletePrefix(ctx, p); err != nil {
			return fmt.Errorf("demo: clear %s%s: %w", o.prefix, p, err)
		}
	}

	// Seed.
	seedStart := time.Now()
	d := &demo{opts: o, pool: pool, cache: cache, counter: counter, rep: rep, bar: bar}
	if err := d.seed(ctx); err != nil {
		return redact.Wrap(dbURL, err, "demo: seed")
	}
	if err := bench.Vacuum(ctx, pool); err != nil { // the database lives from run to run (see bench.Vacuum)
		return redact.Wrap(dbURL, err, "demo")
	}
	rep.Seeding = bench.Duration(time.Since(seedStart).Round(time.Millisecond))
	d.creditStore, d.wfStore = credits.NewStore(pool), workflows.NewStore(pool)
	d.credits = credits.NewCached(d.creditStore, cache, &credits.CachedConfig{Logger: logger, WriteThrough: o.writeThrough})
	defer d.credits.Close()
	d.workflows = workflows.NewCached(d.wfStore, cache, &workflows.CachedConfig{Logger: logger, NoNearCache: o.noNear})
	defer d.workflows.Close()
	hook(demoStageSeeded)

	// From here on the demo always prints its report: a failing phase, an
	// outage or a check that cannot run are in it, and make the exit
	// status 1 after it.
	if rep.Baseline, err = d.phase(ctx, "baseline (Postgres)", false, demoSeedTicks); err != nil {
		return redact.Wrap(dbURL, err, "demo: baseline phase") // interrupted
	}
	cachedName := "cached (ghlcache)"
	if rep.Mode == "no-cache" {
		cachedName = "cached (no-cache mode)"
	}
	var warmup *demoWarmup
	if rep.Mode != "no-cache" {
		bar.set(demoSeedTicks+demoProgressTicks, "warming the cache")
		if warmup, err = d.warm(ctx); err != nil {
			rep.Problems = append(rep.Problems, "warm-up: "+err.Error())
		}
	}
	hook(demoStageWarmed)
	rep.Cached, err = d.phase(ctx, cachedName, true, demoSeedTicks+demoProgressTicks)
	rep.Cached.Warmup = warmup
	if err != nil {
		return redact.Wrap(dbURL, err, "demo: cached phase") // interrupted
	}
	bar.set(demoSeedTicks+2*demoProgressTicks, "consistency check")
	rep.Consistency = d.check(ctx)
	hook(demoStageChecked)
	bar.finish()
	if err := ctx.Err(); err != nil {
		return err
	}
	rep.scrub(dbURL, redisURL)
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
	return rep.verdict()
}

// demo holds one run's state.
type demo struct {
	opts    demoOptions
	pool    *pgxpool.Pool
	cache   *cachelayer.Cache
	counter *bench.QueryCounter
	rep     *demoReport
	bar     *progress

	firstUser   int64
	defIDs      []int64
	creditStore *credits.Store
	wfStore     *workflows.Store
	credits     *credits.Cached
	workflows   *workflows.Cached
	saves       atomic.Int64 // workflow saves, for distinct specs
}
