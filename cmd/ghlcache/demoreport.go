package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/redact"
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
	WriteRate     float64         `json:"write_rate,omitzero"` // writes per second, paced (--write-rate); 0: 5% of each goroutine's operations
	Phase         bench.Duration  `json:"phase_duration"`
	Seeding       bench.Duration  `json:"seeding"`
	Baseline      demoPhase       `json:"baseline"`
	Cached        demoPhase       `json:"cached"`
	Consistency   demoConsistency `json:"consistency"`
	// Problems are failures outside the phases' operations (the warm-up).
	Problems []string       `json:"problems,omitempty"`
	Summary  []string       `json:"summary"`
	Elapsed  bench.Duration `json:"elapsed"`
}

// scrub removes the URLs' passwords from every error text in the report.
func (r *demoReport) scrub(urls ...string) {
	clean := func(s string) string {
		for _, u := range urls {
			s = redact.String(s, u)
		}
		return oneLine(s)
	}
	for _, p := range []*demoPhase{&r.Baseline, &r.Cached} {
		p.FirstError, p.Burst.Error = clean(p.FirstError), clean(p.Burst.Error)
	}
	r.Consistency.Reason = clean(r.Consistency.Reason)
	for i := range r.Problems {
		r.Problems[i] = clean(r.Problems[i])
	}
}

// verdict is the demo's exit: nil when every operation succeeded and the
// check verified the cache and found no mismatch.
func (r *demoReport) verdict() error {
	var errs []error
	for _, p := range []demoPhase{r.Baseline, r.Cached} {
		if p.Errors > 0 {
			errs = append(errs, fmt.Errorf("%s: %d operation(s) failed, the first: %s", p.Name, p.Errors, p.FirstError))
		}
		if p.Burst.Error != "" {
			errs = append(errs, fmt.Errorf("%s: burst: %s", p.Name, p.Burst.Error))
		}
	}
	for _, p := range r.Problems {
		errs = append(errs, errors.New(p))
	}
	cs := r.Consistency
	switch {
	case !cs.Verified:
		errs = append(errs, errors.New(cs.Reason))
	case !cs.Passed:
		errs = append(errs, fmt.Errorf("consistency check failed: %d cached value(s) differ from Postgres", cs.Mismatches))
	}
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return errors.New("demo: " + strings.Join(msgs, "; "))
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
	Errors              int64          `json:"errors"`                // failed operations
	FirstError          string         `json:"first_error,omitempty"` // the first of them (redacted)
	// ReadQueries are the balance and definition SELECTs Postgres received
	// for the phase's reads; Avoided are reads that sent none.
	ReadQueries  int64 `json:"read_queries"`
	Avoided      int64 `json:"queries_avoided"`
	TotalQueries int64 `json:"total_queries"` // every statement, writes and outbox included
	// HitRatio is the reads answered by the cache (Redis or the near tier) / reads: a read that fell back
	// to Postgres (Redis failing, breaker open) is no hit. 0 without cache.
	HitRatio float64 `json:"hit_ratio"`
	// FallbackRatio is the reads served by Postgres because Redis failed or
	// the breaker was open / reads.
	FallbackRatio float64 `json:"fallback_ratio"`
	// BreakerOpenings is how often the circuit breaker opened during the
	// phase (Redis failing BreakerFailures times in a row);
	// BreakerOpenAtEnd, whether it was still open when the phase ended.
	BreakerOpenings  int64 `json:"breaker_openings"`
	BreakerOpenAtEnd bool  `json:"breaker_open_at_end"`
	// CPUPerRead is this process's CPU time per read (getrusage);
	// MachineCPUPerRead the whole machine's (Postgres and Redis included,
	// and anything else running), 0 where unknown.
	CPUPerRead        bench.Duration      `json:"cpu_per_read"`
	MachineCPUPerRead bench.Duration      `json:"machine_cpu_per_read"`
	Cache             bench.CacheCounters `json:"cache"` // the cache's counters during the phase
	Burst             demoBurst           `json:"burst"`
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
	Error      string         `json:"error,omitempty"` // why it did not run (redacted)
}

// demoSummary says in words where the win is, and where it is not.
func demoSummary(r *demoReport) []string {
	b, c := r.Baseline, r.Cached
	lat := func(d bench.Duration) string { return formatLatency(time.Duration(d)) }
	var out []string
	if r.Mode == "no-cache" {
		out = append(out, "No-cache mode: every read of the cached phase went to Postgres, as in the baseline; "+
			"only concurrent reads of one key were merged into one query.")
	}
	for _, p := range []demoPhase{b, c} {
		if o := outage(p); o != "" {
			out = append(out, o)
		}
	}
	if b.P50 > 0 && c.P50 > 0 {
		ratio := float64(b.P50) / float64(c.P50)
		var median string
		switch {
		case ratio < 1.25 && ratio > 0.8:
			median = fmt.Sprintf("Latency: a cached read took %s at the median against %s from Postgres: on loopback a Redis GET "+
				"costs about as much as a primary-key SELECT, so reads are not much faster here; the gap grows with a network hop or a busy database.",
				lat(c.P50), lat(b.P50))
		case ratio >= 1.25:
			median = fmt.Sprintf("Latency: a cached read took %s at the median against %s from Postgres (%.1f× faster); "+
				"on loopback most of that is Postgres being busier, not Redis being far faster.", lat(c.P50), lat(b.P50), ratio)
		default:
			median = fmt.Sprintf("Latency: a cached read took %s at the median, slower than Postgres's %s on this machine: "+
				"the cache does not make reads faster here.", lat(c.P50), lat(b.P50))
		}
		out = append(out, median+" "+tails(b, c))
	}
	if c.Reads > 0 && r.Mode != "no-cache" {
		out = append(out, fmt.Sprintf("Postgres load, the real win when Redis answers: %s reads sent %s SELECTs (%.1f%% avoided; "+
			"%.1f%% of reads were cache hits), against one per read in the baseline.",
			formatRate(float64(c.Reads)), formatRate(float64(c.ReadQueries)), 100*float64(c.Avoided)/float64(c.Reads), 100*c.HitRatio))
	}
	if b.MachineCPUPerRead > 0 && c.MachineCPUPerRead > 0 {
		out = append(out, fmt.Sprintf("CPU: the whole machine spent %s per read without the cache and %s with it (this process alone: %s and %s).",
			lat(b.MachineCPUPerRead), lat(c.MachineCPUPerRead), lat(b.CPUPerRead), lat(c.CPUPerRead)))
	}
	if c.Burst.Error == "" && b.Burst.Error == "" {
		out = append(out, fmt.Sprintf("Stampede: %d goroutines reading a hot key that a write had just invalidated cost %d SELECT(s) with the cache, %d without.",
			c.Burst.Goroutines, c.Burst.Queries, b.Burst.Queries))
	}
	cs := r.Consistency
	switch {
	case !cs.Verified:
		out = append(out, "Consistency: NOT VERIFIED, "+cs.Reason+".")
	case cs.Passed:
		out = append(out, fmt.Sprintf("Consistency: all %d cached balances and %d cached definitions equal Postgres after %d writes.",
			cs.BalancesCached, cs.DefinitionsCached, b.CreditWrites+c.CreditWrites+b.WorkflowSaves+c.WorkflowSaves))
	default:
		out = append(out, fmt.Sprintf("Consistency: FAILED, %d cached values differ from Postgres.", cs.Mismatches))
	}
	return out
}

// tails compares the p99 and p99.9 of the cached phase (c) with the
// baseline's (b), saying plainly when they are worse.
func tails(b, c demoPhase) string {
	lat := func(d bench.Duration) string { return formatLatency(time.Duration(d)) }
	s := fmt.Sprintf("The tails: p99 %s against %s, p99.9 %s against %s", lat(c.P99), lat(b.P99), lat(c.P999), lat(b.P999))
	worst := max(float64(c.P99)/float64(max(b.P99, 1)), float64(c.P999)/float64(max(b.P999, 1)))
	switch {
	case worst >= 1.25:
		return s + fmt.Sprintf(": slower with the cache (up to %.1f× the baseline's): a miss pays a Redis round trip before its SELECT, "+
			"and a read that overlaps an invalidation loads again.", worst)
	case worst <= 0.8:
		return s + ": faster with the cache."
	default:
		return s + ": about the same."
	}
}

// outage describes in one sentence the trouble Redis gave during phase p,
// "" if none.
func outage(p demoPhase) string {
	cc := p.Cache
	if cc.RedisErrors == 0 && cc.Fallbacks == 0 && p.BreakerOpenings == 0 && cc.InvalidationFailures == 0 {
		return ""
	}
	s := fmt.Sprintf("Outage in the %s phase: %s Redis call(s) failed; %s read(s) (%.1f%%) fell back to Postgres",
		p.Name, formatRate(float64(cc.RedisErrors)), formatRate(float64(cc.Fallbacks)), 100*p.FallbackRatio)
	if p.BreakerOpenings > 0 {
		s += fmt.Sprintf("; the circuit breaker opened %d time(s)", p.BreakerOpenings)
		if p.BreakerOpenAtEnd {
			s += " and was still open at the end"
		}
	}
	if cc.InvalidationFailures > 0 {
		s += fmt.Sprintf("; %s invalidation(s) did not reach Redis (the outbox retries them)", formatRate(float64(cc.InvalidationFailures)))
	}
	return s + "."
}

// printDemo writes the report as a table and the summary.
func printDemo(w io.Writer, r *demoReport) error {
	fmt.Fprintf(w, "ghlcache demo — %d users × %d credit types, %d workflow definitions, %d goroutines, %s per phase\n",
		r.Users, len(r.CreditTypes), r.Workflows, r.Concurrency, r.Phase)
	if r.WriteRate > 0 {
		fmt.Fprintf(w, "writes paced at %g per second in both phases (%d writers of their own; the %d goroutines only read)\n",
			r.WriteRate, demoWriters, r.Concurrency)
	}
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
	cached := func(f func(p demoPhase) string) func(p demoPhase) string {
		return func(p demoPhase) string {
			if p.Cache.Hits+p.Cache.Misses+p.Cache.Fallbacks == 0 {
				return "—" // no read went through the cache
			}
			return f(p)
		}
	}
	row("reads", func(p demoPhase) string { return formatRate(float64(p.Reads)) })
	row("cache hit ratio (hits / reads)", cached(func(p demoPhase) string {
		return fmt.Sprintf("%.1f%% (%s hits)", 100*p.HitRatio, formatRate(float64(p.Cache.Hits)))
	}))
	row("reads that fell back to Postgres", cached(func(p demoPhase) string {
		return fmt.Sprintf("%s (%.1f%%)", formatRate(float64(p.Cache.Fallbacks)), 100*p.FallbackRatio)
	}))
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
	row("invalidation failures", func(p demoPhase) string { return formatRate(float64(p.Cache.InvalidationFailures)) })
	row("Redis errors", func(p demoPhase) string { return formatRate(float64(p.Cache.RedisErrors)) })
	row("breaker openings", func(p demoPhase) string {
		if p.BreakerOpenAtEnd {
			return fmt.Sprintf("%d (open at the end)", p.BreakerOpenings)
		}
		return fmt.Sprint(p.BreakerOpenings)
	})
	row("failed operations", func(p demoPhase) string { return formatRate(float64(p.Errors)) })
	row(fmt.Sprintf("burst: %d readers, SELECTs", c.Burst.Goroutines), func(p demoPhase) string {
		if p.Burst.Error != "" {
			return "did not run"
		}
		return fmt.Sprintf("%d (in %s)", p.Burst.Queries, lat(p.Burst.Wall))
	})
	if err := tw.Flush(); err != nil {
		return err
	}
	if wu := c.Warmup; wu != nil {
		fmt.Fprintf(w, "(before the cached phase, %d keys were read once to warm the cache, in %s; not measured)\n", wu.Keys, wu.Wall)
	}
	for _, p := range []demoPhase{b, c} {
		if p.FirstError != "" {
			fmt.Fprintf(w, "(%s: the first failed operation: %s)\n", p.Name, p.FirstError)
		}
		if p.Burst.Error != "" {
			fmt.Fprintf(w, "(%s: the burst did not run: %s)\n", p.Name, p.Burst.Error)
		}
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "(%s)\n", p)
	}
	cs := r.Consistency
	if !cs.Verified {
		fmt.Fprintf(w, "\nconsistency check NOT VERIFIED: %s\n", cs.Reason)
	} else {
		verdict := "passed"
		if !cs.Passed {
			verdict = "FAILED"
		}
		fmt.Fprintf(w, "\nconsistency check %s: %d balances checked, %d cached, %d cached definitions, %d mismatches\n",
			verdict, cs.BalancesChecked, cs.BalancesCached, cs.DefinitionsCached, cs.Mismatches)
		for _, ex := range cs.Examples {
			fmt.Fprintf(w, "  %s\n", ex)
		}
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
