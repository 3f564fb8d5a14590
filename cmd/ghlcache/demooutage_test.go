package main

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// demoThroughProxy returns demoArgs with Redis reached through a proxy of
// its own, and the proxy.
func demoThroughProxy(t *testing.T, extra ...string) ([]string, *testsvc.Proxy) {
	t.Helper()
	u, err := url.Parse(testsvc.RedisURL(t))
	require.NoError(t, err)
	proxy := testsvc.StartProxy(t, u.Host)
	args := demoArgs(t, extra...)
	for i := range args {
		if args[i] == "--redis-url" {
			args[i+1] = "redis://" + proxy.Addr + u.Path
		}
	}
	return args, proxy
}

// TestDemoRedisDiesAndStaysDown cuts Redis off for good once the cache is
// warm: the demo still prints its whole report, shows the outage in it, and
// tells "could not verify the cache (Redis unreachable)" from a mismatch.
func TestDemoRedisDiesAndStaysDown(t *testing.T) {
	t.Parallel()
	for _, asJSON := range []bool{true, false} {
		t.Run(map[bool]string{true: "json", false: "text"}[asJSON], func(t *testing.T) {
			t.Parallel()
			args, proxy := demoThroughProxy(t)
			if !asJSON {
				args = append(args[:1], args[2:]...) // drop --json
			}
			e := &env{lookupEnv: func(string) (string, bool) { return "", false }, demoHook: func(stage string) {
				if stage == demoStageWarmed {
					proxy.Block()
				}
			}}
			start := time.Now()
			r := cliWith(t, e, args...)
			require.Less(t, time.Since(start), 40*time.Second, "the check gives up on an unreachable Redis")
			require.Equal(t, 1, r.code, "stderr: %s", r.stderr)
			require.ErrorContains(t, r.err, "could not verify the cache (Redis unreachable)")
			require.NotContains(t, r.err.Error(), "differ from Postgres", "not a mismatch")
			require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line on stderr: %s", r.stderr)

			if !asJSON {
				out := r.stdout
				require.Contains(t, out, "consistency check NOT VERIFIED: could not verify the cache (Redis unreachable)")
				require.Regexp(t, `(?m)^reads that fell back to Postgres\s+—\s+[\d,]+ \(\d+\.\d%\)`, out)
				require.Regexp(t, `(?m)^breaker openings\s+0\s+[1-9]\d* \(open at the end\)$`, out)
				require.Regexp(t, `(?m)^Redis errors\s+0\s+[1-9]`, out)
				require.Contains(t, out, "Outage in the cached (ghlcache) phase")
				require.Contains(t, out, "Consistency: NOT VERIFIED")
				return
			}
			var rep demoReport
			require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)
			cs := rep.Consistency
			require.False(t, cs.Verified)
			require.False(t, cs.Passed)
			require.Zero(t, cs.Mismatches)
			require.Contains(t, cs.Reason, "Redis unreachable")
			require.Positive(t, cs.OutboxDepthAtCheck, "the writes' invalidations wait in the outbox")

			c := rep.Cached
			require.Zero(t, c.Errors, "reads and writes succeed without Redis: %s", c.FirstError)
			require.Positive(t, c.Reads)
			require.Positive(t, c.Cache.Fallbacks)
			require.Positive(t, c.Cache.RedisErrors)
			require.GreaterOrEqual(t, c.BreakerOpenings, int64(1))
			require.True(t, c.BreakerOpenAtEnd)
			require.InDelta(t, float64(c.Cache.Hits)/float64(c.Reads), c.HitRatio, 1e-9)
			require.InDelta(t, float64(c.Cache.Fallbacks)/float64(c.Reads), c.FallbackRatio, 1e-9)
			// Redis was gone for the whole phase: no read was a hit. (How
			// many were fallbacks depends on the writes: a read of a key
			// whose invalidation is pending bypasses Redis without one.)
			require.Zero(t, c.Cache.Hits, "Redis was gone for the whole phase")
			require.Zero(t, c.HitRatio)
			require.Zero(t, rep.Baseline.BreakerOpenings)
		})
	}
}

// TestDemoReportTellsOutagesAndTails prints the report of a run like the
// issue's (Redis stopped for 3 s during the cached phase): the hit ratio
// agrees with the reads that went to Postgres, the outage has its rows and
// a sentence, and the tails are quoted next to the medians.
func TestDemoReportTellsOutagesAndTails(t *testing.T) {
	t.Parallel()
	ms := func(f float64) bench.Duration { return bench.Duration(time.Duration(f * float64(time.Millisecond))) }
	b := demoPhase{Name: "baseline (Postgres)", Reads: 10000, ReadQueries: 10000, P50: ms(1.3), P99: ms(4.5), P999: ms(8.6)}
	c := demoPhase{Name: "cached (ghlcache)", Reads: 10000, ReadQueries: 5600, P50: ms(0.14), P99: ms(9), P999: ms(17.2),
		BreakerOpenings: 1,
		Cache:           bench.CacheCounters{Hits: 4540, Misses: 353, Fallbacks: 5460, RedisErrors: 41, InvalidationFailures: 12, Recoveries: 1}}
	b.setRatios()
	c.setRatios()
	rep := &demoReport{Mode: "redis", Users: 2000, CreditTypes: demoCreditTypes, Baseline: b, Cached: c,
		Consistency: demoConsistency{Verified: true, Passed: true, BalancesCached: 10}}
	rep.Summary = demoSummary(rep)
	var out strings.Builder
	require.NoError(t, printDemo(&out, rep))
	text := out.String()

	require.Regexp(t, `(?m)^cache hit ratio \(hits / reads\)\s+—\s+45\.4% \(4,540 hits\)$`, text)
	require.Regexp(t, `(?m)^reads that fell back to Postgres\s+—\s+5,460 \(54\.6%\)$`, text)
	require.Regexp(t, `(?m)^breaker openings\s+0\s+1$`, text)
	require.Regexp(t, `(?m)^invalidation failures\s+0\s+12$`, text)
	require.Regexp(t, `(?m)^Redis errors\s+0\s+41$`, text)
	summary := strings.Join(rep.Summary, " ")
	require.Contains(t, summary, "Outage in the cached (ghlcache) phase: 41 Redis call(s) failed; 5,460 read(s) (54.6%) fell back to Postgres; "+
		"the circuit breaker opened 1 time(s); 12 invalidation(s) did not reach Redis")
	require.Contains(t, summary, "p99 9ms against 4.5ms, p99.9 17.2ms against 8.6ms: slower with the cache (up to 2.0× the baseline's)")
	require.Contains(t, summary, "45.4% of reads were cache hits")
}
