package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

var benchCommand = &command{
	name:    "bench",
	summary: "compare ghlcache with Postgres alone, naive cache-aside and go-redis/cache",
	help: `Seed balances in the demo database (see --db-name) and measure, in one
process, on the same data, Redis and Postgres, each system in turn and for
several rounds (figures are medians):

  postgres                every read is a primary-key SELECT
  naive                   cache-aside as the TypeScript original: GET; on a miss
                          SELECT then SET with a TTL; DEL after a write
  go-redis/cache          github.com/go-redis/cache/v9 Once (singleflight per process)
  go-redis/cache+tinylfu  the same with its local TinyLFU cache
  ghlcache                credits.Cached on cachelayer

and the raw floor of any Redis hit: a go-redis GET and a JSON decode of the
same bytes. Workloads: hit-heavy Zipf reads (--concurrency), 95/5
read/write, a cold-key stampede of --stampede-goroutines readers in one
instance and across --stampede-instances (separate clients and pools;
Postgres queries counted), and a staleness probe (writers invalidating while
readers fill, on several instances; keys whose cached value differs from
Postgres after quiescence). Keys live under --prefix and are deleted at the
end. The default run takes about two minutes on 2 cores.`,
	flags: func(fs *flag.FlagSet) runFunc {
		var o benchOptions
		fs.StringVar(&o.dbName, "db-name", defaultDemoDatabase, demoDatabaseHelp)
		fs.StringVar(&o.prefix, "prefix", "ghl:bench:", "Redis key prefix of the run")
		fs.DurationVar(&o.cfg.Duration, "duration", time.Second, "length of each timed run")
		fs.IntVar(&o.cfg.Rounds, "rounds", 3, "rounds of every measurement (figures are medians)")
		fs.IntVar(&o.cfg.Users, "users", 10_000, "balances of the hit-heavy and 95/5 workloads")
		fs.StringVar(&o.concurrency, "concurrency", "1,16,64", "goroutines of the hit-heavy workload, comma-separated")
		fs.StringVar(&o.systems, "systems", "", "systems to compare, comma-separated (default all)")
		fs.IntVar(&o.cfg.StampedeGoroutines, "stampede-goroutines", 1000, "readers of one cold key")
		fs.IntVar(&o.cfg.StampedeInstances, "stampede-instances", 4, "instances of the multi-instance stampede")
		fs.DurationVar(&o.cfg.StalenessDuration, "staleness-duration", time.Second, "length of each staleness probe")
		fs.BoolVar(&o.json, "json", false, "print the results as JSON")
		fs.StringVar(&o.html, "html", "", "also write an HTML page with latency and throughput charts to `FILE`")
		fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `FILE` (go tool pprof)")
		return func(ctx context.Context, e *env, _ []string) error {
			return runBench(ctx, e, o)
		}
	},
}

type benchOptions struct {
	cfg         bench.Config
	dbName      string
	prefix      string
	concurrency string
	systems     string
	json        bool
	html        string
	cpuProfile  string
}

func runBench(ctx context.Context, e *env, o benchOptions) error {
	const path = "ghlcache bench"
	cfg := o.cfg
	if cfg.Duration <= 0 || cfg.StalenessDuration <= 0 {
		return usagef(path, "--duration and --staleness-duration must be positive")
	}
	if cfg.Rounds < 1 || cfg.Users < 1 || cfg.StampedeGoroutines < 1 || cfg.StampedeInstances < 1 {
		return usagef(path, "--rounds, --users, --stampede-goroutines and --stampede-instances must be at least 1")
	}
	if o.prefix == "" {
		return usagef(path, "--prefix must not be empty")
	}
	for f := range strings.SplitSeq(o.concurrency, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return usagef(path, "--concurrency: want positive numbers separated by commas, not %q", o.concurrency)
		}
		cfg.Concurrency = append(cfg.Concurrency, n)
	}
	if o.systems != "" {
		for f := range strings.SplitSeq(o.systems, ",") {
			k := bench.Kind(strings.TrimSpace(f))
			if !slices.Contains(bench.Kinds, k) {
				return usagef(path, "--systems: unknown system %q, want some of %s", k, kindNames())
			}
			cfg.Systems = append(cfg.Systems, k)
		}
	}
	ropts, err := redisOptions(e, "bench")
	if err != nil {
		return err
	}
	pool, dbURL, err := openDemoDatabase(ctx, e, o.dbName, nil)
	if err != nil {
		return err
	}
	pool.Close() // bench.Run opens pools of its own, with a query counter
	cfg.DatabaseURL = dbURL
	cfg.RedisOptions = ropts
	cfg.Prefix = o.prefix
	cfg.Logger = slog.New(slog.DiscardHandler)
	bar := e.newProgress(1, "bench")
	cfg.Progress = func(step string, done, total int) {
		if bar.bar != nil {
			bar.bar.ChangeMax(total)
		}
		bar.set(done, step)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("bench: cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	res, err := bench.Run(ctx, cfg)
	bar.finish()
	if err != nil {
		return redact.Wrap(dbURL, err, "bench")
	}
	if o.html != "" {
		if err := writeBenchHTML(o.html, res); err != nil {
			return fmt.Errorf("bench: write %s: %w", o.html, err)
		}
	}
	if o.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return printBench(e.stdout, res)
}

func kindNames() string {
	s := make([]string, len(bench.Kinds))
	for i, k := range bench.Kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// printBench writes the results as tables, then the targets of the
// comparison with their verdicts.
func printBench(w io.Writer, r *bench.Results) error {
	env, s := r.Environment, r.Settings
	fmt.Fprintf(w, "ghlcache bench — %s, %s, %d CPUs, Redis %s, PostgreSQL %s (took %s)\n",
		env.Date, env.Go, env.CPUs, env.Redis, env.Postgres, time.Duration(r.Elapsed).Round(time.Second))
	fmt.Fprintf(w, "%d balances, Zipf s=%.1f, %d rounds of %s per figure (medians), Postgres pools of %d conns, TTL %s\n\n",
		s.Users, s.ZipfS, s.Rounds, s.Duration, s.PoolConns, s.TTL)

	fmt.Fprintln(w, "Hit-heavy Zipf reads (every key cached; postgres: every read a SELECT)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tgoroutines\treads/s\tmean\tp50\tp99\tCPU/read\tmachine CPU/read\tallocs/read\tRedis RTs/read\tmean vs floor\treads vs floor\treads vs postgres\t")
	floorOps := map[int]float64{}
	for _, h := range r.Hits {
		if h.System == bench.FloorName {
			floorOps[h.Goroutines] = h.OpsPerSec
		}
	}
	for _, h := range r.Hits {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.2f\t%.2f×\t%.2f×\t%.2f×\t\n", h.System, h.Goroutines, formatRate(h.OpsPerSec),
			formatLatency(time.Duration(h.Mean)), formatLatency(time.Duration(h.P50)), formatLatency(time.Duration(h.P99)),
			formatLatency(time.Duration(h.CPUPerOp)), formatLatency(time.Duration(h.MachineCPUPerOp)), h.AllocsPerOp, h.RedisRoundTripsPerOp,
			h.VsFloor, ratio(h.OpsPerSec, floorOps[h.Goroutines]), h.VsPostgres)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	for _, t := range []struct {
		title string
		rows  []bench.ColdRow
	}{
		{fmt.Sprintf("Read-only Zipf from a cold cache, %d goroutines over %d instances", s.MixedGoroutines, s.ColdInstances), r.ReadOnly},
		{fmt.Sprintf("95/5 read/write from a cold cache, %d goroutines over %d instances (writes: Add through each system's write path)",
			s.MixedGoroutines, s.ColdInstances), r.Mixed},
	} {
		fmt.Fprintf(w, "\n%s\n", t.title)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "system\tops/s\tmachine CPU/op\tPG SELECTs/read\tfloor\tPG stmts/write\tRedis cmds/op\tRedis RTs/op\thit ratio\tallocs/op\tread p50\tread p99\twrite p50\tstale reads\t")
		for _, m := range t.rows {
			hr, floor := "—", "—" // no cache: no hit ratio, and no floor to hold it to
			if m.HitRatio >= 0 {
				hr, floor = fmt.Sprintf("%.3f", m.HitRatio), fmt.Sprintf("%.3f", m.MinSelectsPerRead)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.3f\t%s\t%.2f\t%.2f\t%.2f\t%s\t%.1f\t%s\t%s\t%s\t%d of %d\t\n", m.System, formatRate(m.OpsPerSec),
				formatLatency(time.Duration(m.MachineCPUPerOp)), m.SelectsPerRead, floor, m.WriteStatementsPerWrite,
				m.RedisCommandsPerOp, m.RedisRoundTripsPerOp, hr, m.AllocsPerOp,
				formatLatency(time.Duration(m.ReadP50)), formatLatency(time.Duration(m.ReadP99)),
				formatLatency(time.Duration(m.WriteP50)), m.StaleReads, m.Reads)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, m := range t.rows {
			if c := m.Cache; c != nil {
				fmt.Fprintf(w, "%s's reads (last round): %d hits (%d near), %d misses; %d loads, %d reads shared a load, %d lease waits, %d fills rejected, %d fallbacks, %d bypasses; %d invalidations, %d failed\n",
					m.System, c.Hits, c.NearHits, c.Misses, c.Loads, c.LoadsShared, c.LeaseWaits, c.StaleFillsRejected, c.Fallbacks, c.Bypasses, c.Invalidations, c.InvalidationFailures)
			}
		}
	}
	fmt.Fprintln(w, "(a stale read began after a write of its key had returned, and returned an older version;\n"+
		"floor: the fewest SELECTs per read any cache that deletes a key on write could have spent on the same reads and writes)")

	fmt.Fprintf(w, "\nCold-key stampede: %d goroutines read one uncached key at once; Postgres SELECTs\n", s.StampedeGoroutines)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tinstances\tqueries (median)\tworst\trounds\ttime\t")
	for _, st := range r.Stampedes {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t\n", st.System, st.Instances, st.Queries, st.MaxQueries,
			joinInts(st.Rounds), formatLatency(time.Duration(st.Wall)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nStaleness probe: writers invalidate while readers fill, %d keys on %d instances; then\n"+
		"every key is read through every instance and compared with Postgres\n", s.StalenessKeys, s.StalenessInstances)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tstale keys (median)\tworst\trounds\tkeys written\twrites\t")
	for _, st := range r.Staleness {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%d\t\n", st.System, st.StaleKeys, st.MaxStale,
			joinInts(st.Rounds), st.Written, st.Writes)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nTargets (a ratio of two cold-cache systems is the median of the rounds' ratios: systems take turns in each round)")
	for _, t := range benchTargets(r) {
		mark := "met"
		if !t.met {
			mark = "MISSED"
		}
		fmt.Fprintf(w, "  %-6s %s\n", mark, t.text)
	}
	return nil
}

// target is one of the project's targets, measured.
type target struct {
	text string
	met  bool
}

// ratio is a / b, 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// benchTargets checks the results against the targets the project set
// (issue 5's stampede and staleness guarantees, issue 11's costs).
func benchTargets(r *bench.Results) []target {
	var out []target
	add := func(met bool, format string, args ...any) {
		out = append(out, target{fmt.Sprintf(format, args...), met})
	}
	hit := func(system string, g int) *bench.HitRow {
		for i := range r.Hits {
			if r.Hits[i].System == system && r.Hits[i].Goroutines == g {
				return &r.Hits[i]
			}
		}
		return nil
	}
	cold := func(rows []bench.ColdRow, k bench.Kind) *bench.ColdRow {
		for i := range rows {
			if rows[i].System == string(k) {
				return &rows[i]
			}
		}
		return nil
	}
	// Ratios between cold rows are read round by round (systems take turns
	// in each round): the median of the rounds' ratios, which a drift of
	// the machine's speed over the run does not move; the ratio of the
	// medians where the rounds do not pair up.
	opsRatio := func(a, b *bench.ColdRow) float64 {
		if x := bench.PairedRatio(a.RoundOpsPerSec, b.RoundOpsPerSec); x > 0 {
			return x
		}
		return ratio(a.OpsPerSec, b.OpsPerSec)
	}
	cpuRatio := func(a, b *bench.ColdRow) float64 {
		if x := bench.PairedRatio(a.RoundMachineCPUPerOp, b.RoundMachineCPUPerOp); x > 0 {
			return x
		}
		return ratio(float64(a.MachineCPUPerOp), float64(b.MachineCPUPerOp))
	}
	var gs []int
	for _, h := range r.Hits {
		if !slices.Contains(gs, h.Goroutines) {
			gs = append(gs, h.Goroutines)
		}
	}
	for _, g := range gs {
		h, f := hit(string(bench.KindGhlcache), g), hit(bench.FloorName, g)
		if h != nil && f != nil {
			x := ratio(h.OpsPerSec, f.OpsPerSec)
			add(x >= 1 && h.AllocsPerOp <= f.AllocsPerOp+3, "warm hits ≥ 1.0× the raw GET+decode floor at %d goroutines, allocs ≤ floor + 3: %.2f×, %.1f allocs (floor %.1f)",
				g, x, h.AllocsPerOp, f.AllocsPerOp)
		}
	}
	for _, g := range gs {
		n, tl, f := hit(string(bench.KindGhlcacheNear), g), hit(string(bench.KindGoRedisTiny), g), hit(bench.FloorName, g)
		if n != nil && tl != nil {
			add(n.OpsPerSec >= tl.OpsPerSec, "(near tier) warm hits ≥ go-redis/cache+tinylfu at %d goroutines: %.2f×", g, ratio(n.OpsPerSec, tl.OpsPerSec))
		}
		if n != nil && f != nil {
			add(n.OpsPerSec >= 20*f.OpsPerSec && n.AllocsPerOp <= 1, "(near tier) warm hits ≥ 20× the raw GET+decode floor at %d goroutines, ≤ 1 alloc: %.1f×, %.1f allocs",
				g, ratio(n.OpsPerSec, f.OpsPerSec), n.AllocsPerOp)
		}
	}
	if n := cold(r.Mixed, bench.KindGhlcacheNear); n != nil {
		add(n.StaleReads == 0, "(near tier) 95/5: 0 stale reads: %d", n.StaleReads)
	}
	gh, grc, pg := cold(r.Mixed, bench.KindGhlcache), cold(r.Mixed, bench.KindGoRedisCache), cold(r.Mixed, bench.KindPostgres)
	if gh != nil && grc != nil {
		add(opsRatio(gh, grc) >= 1, "95/5 ops/s ≥ 1.0× go-redis/cache: %.2f×", opsRatio(gh, grc))
		x := cpuRatio(gh, grc)
		add(x > 0 && x <= 1, "95/5 machine CPU per op ≤ 1.0× go-redis/cache: %.2f×", x)
		add(gh.SelectsPerRead <= 0.15 && gh.SelectsPerRead <= grc.SelectsPerRead,
			"95/5 Postgres SELECTs per read ≤ 0.15 and ≤ go-redis/cache's: %.3f (go-redis/cache %.3f; floor for a delete-on-write cache on ghlcache's run %.3f)",
			gh.SelectsPerRead, grc.SelectsPerRead, gh.MinSelectsPerRead)
	}
	if gh != nil && pg != nil {
		add(opsRatio(gh, pg) >= 1, "95/5 ops/s ≥ 1.0× Postgres alone (pool of %d per instance): %.2f×",
			r.Settings.PoolConns, opsRatio(gh, pg))
	}
	if gh != nil {
		add(gh.StaleReads == 0, "95/5: 0 stale reads for ghlcache: %d", gh.StaleReads)
	}
	if wt := cold(r.Mixed, bench.KindGhlcacheWT); wt != nil && grc != nil && pg != nil {
		add(opsRatio(wt, grc) >= 1, "(opt-in write-through) 95/5 ops/s ≥ 1.0× go-redis/cache: %.2f×", opsRatio(wt, grc))
		x := cpuRatio(wt, grc)
		add(x > 0 && x <= 1, "(opt-in write-through) 95/5 machine CPU per op ≤ 1.0× go-redis/cache: %.2f×", x)
		add(wt.SelectsPerRead <= 0.15 && wt.SelectsPerRead <= grc.SelectsPerRead,
			"(opt-in write-through) 95/5 Postgres SELECTs per read ≤ 0.15 and ≤ go-redis/cache's: %.3f", wt.SelectsPerRead)
		add(opsRatio(wt, pg) >= 1, "(opt-in write-through) 95/5 ops/s ≥ 1.0× Postgres alone: %.2f×", opsRatio(wt, pg))
		add(wt.StaleReads == 0, "(opt-in write-through) 95/5: 0 stale reads: %d", wt.StaleReads)
	}
	if h, p := cold(r.ReadOnly, bench.KindGhlcache), cold(r.ReadOnly, bench.KindGoRedisCache); h != nil && p != nil {
		add(opsRatio(h, p) >= 1, "read-only Zipf from cold ≥ 1.0× go-redis/cache: %.2f×", opsRatio(h, p))
	}
	for _, st := range r.Stampedes {
		if st.System == string(bench.KindGhlcache) {
			add(st.MaxQueries == 1, "stampede of %d on %d instance(s): 1 query for ghlcache: %d (worst %d)",
				st.Goroutines, st.Instances, st.Queries, st.MaxQueries)
		}
	}
	for _, st := range r.Staleness {
		if bench.Kind(st.System).IsGhlcache() {
			add(st.MaxStale == 0, "staleness probe: 0 stale keys for %s: %d (worst %d)", st.System, st.StaleKeys, st.MaxStale)
		}
	}
	return out
}

func joinInts[T int | int64](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.FormatInt(int64(x), 10)
	}
	return strings.Join(s, " ")
}

// formatRate writes a rate with thousands separators.
func formatRate(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// writeBenchHTML writes a self-contained page with the results as SVG bar
// charts (no script, no external resource).
func writeBenchHTML(path string, r *bench.Results) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := renderBenchHTML(f, r); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
