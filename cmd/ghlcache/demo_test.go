package main

import (
	"encoding/json"
	"io"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func init() {
	// As main does: go-redis's own dial-failure logging is noise in the
	// tests that point at closed ports.
	redis.SetLogger(discardLogger{})
}

// demoArgs are a demo run small enough for a test: a fresh database of the
// test's own (--db-name "" uses it as is) and a key prefix of its own.
func demoArgs(t *testing.T, extra ...string) []string {
	args := []string{"demo", "--json", "--database-url", testsvc.NewDatabase(t), "--db-name", "",
		"--redis-url", testsvc.RedisURL(t), "--prefix", testsvc.Prefix(t),
		"--duration", "300ms", "--users", "40", "--workflows", "8", "--concurrency", "4", "--burst", "100"}
	return append(args, extra...)
}

func TestDemoJSON(t *testing.T) {
	t.Parallel()
	r := cli(t, demoArgs(t)...)
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	requireNoSecret(t, r)
	var rep demoReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)

	require.Equal(t, "redis", rep.Mode)
	require.True(t, rep.Consistency.Passed)
	require.Zero(t, rep.Consistency.Mismatches)
	require.Equal(t, 40*len(demoCreditTypes), rep.Consistency.BalancesChecked)
	require.Positive(t, rep.Consistency.BalancesCached)

	b, c := rep.Baseline, rep.Cached
	for _, p := range []demoPhase{b, c} {
		require.Positive(t, p.Reads, p.Name)
		require.Positive(t, p.ReadsPerSec, p.Name)
		require.LessOrEqual(t, p.P50, p.P99, p.Name)
		require.LessOrEqual(t, p.P99, p.P999, p.Name)
		require.Positive(t, p.CPUPerRead, p.Name)
		require.Zero(t, p.Errors, p.Name)
		require.Equal(t, 100, p.Burst.Goroutines)
	}
	// The baseline reads Postgres every time; the cached phase mostly not.
	require.GreaterOrEqual(t, b.ReadQueries, b.Reads)
	require.Zero(t, b.HitRatio)
	require.Less(t, c.ReadQueries, c.Reads)
	require.Equal(t, c.Reads-c.ReadQueries, c.Avoided)
	require.Greater(t, c.HitRatio, 0.5)
	require.LessOrEqual(t, c.HitRatio, 1.0)
	require.NotNil(t, c.Warmup)
	require.Equal(t, 40*len(demoCreditTypes)+8, c.Warmup.Keys)
	// The burst: every reader queries without the cache, one with it.
	require.EqualValues(t, 100, b.Burst.Queries)
	// One, or two when an outbox sweep's repeated delete of the key voided
	// the flight's lease: the fill is then rejected and the flight loads
	// once more before answering (no stale set), as designed.
	require.GreaterOrEqual(t, c.Burst.Queries, int64(1))
	require.LessOrEqual(t, c.Burst.Queries, int64(2))
	// The burst's other readers are served by the one load: joined to its
	// flight (LoadsShared) or, arriving once it filled, by a GET (Hits).
	require.Positive(t, c.Cache.LoadsShared+c.Cache.Hits)
	require.NotEmpty(t, rep.Summary)
}

func TestDemoText(t *testing.T) {
	t.Parallel()
	args := demoArgs(t)
	r := cli(t, append(args[:1], args[2:]...)...) // without --json
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	require.Contains(t, r.stdout, "consistency check passed")
	require.Regexp(t, `(?m)^reads/s\s+\S+\s+\S+`, r.stdout)
	require.Regexp(t, `(?m)^burst: 100 readers, SELECTs\s+100 \(in .*\)\s+1 \(in .*\)`, r.stdout)
	require.Contains(t, r.stdout, "Postgres load, the real win")
	require.Empty(t, r.stderr, "no progress bar when stderr is not a terminal")
}

// TestDemoPacedWrites: with --write-rate both phases write on one fixed
// schedule (the slots that fall within a phase, whatever its reads'
// speed), while the --concurrency goroutines only read.
func TestDemoPacedWrites(t *testing.T) {
	t.Parallel()
	r := cli(t, demoArgs(t, "--write-rate", "100")...)
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	var rep demoReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)
	require.Equal(t, 100.0, rep.WriteRate)
	require.True(t, rep.Consistency.Passed)
	for _, p := range []demoPhase{rep.Baseline, rep.Cached} {
		require.Positive(t, p.Reads, p.Name)
		require.Zero(t, p.Errors, p.Name)
		writes := p.CreditWrites + p.InsufficientDeducts + p.WorkflowSaves
		require.Positive(t, writes, p.Name)
		// 100 per second for 300 ms: the slots at 0, 10, …, 290 ms (a save
		// that lost a race is neither done nor counted here).
		require.LessOrEqual(t, writes, int64(30), p.Name)
	}
}

func TestDemoNoCache(t *testing.T) {
	t.Parallel()
	r := cli(t, demoArgs(t, "--no-cache", "--redis-url", "redis://u:"+password+"@127.0.0.1:1/0")...)
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	requireNoSecret(t, r)
	var rep demoReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	require.Equal(t, "no-cache", rep.Mode)
	require.True(t, rep.Consistency.Passed)
	require.Zero(t, rep.Consistency.BalancesCached)
	require.Nil(t, rep.Cached.Warmup)
	// Every read goes to Postgres, except those merged with a concurrent
	// read of the same key (one load per key at a time).
	require.Positive(t, rep.Cached.ReadQueries)
	require.LessOrEqual(t, rep.Cached.ReadQueries, rep.Cached.Reads)
	require.Zero(t, rep.Cached.HitRatio)
	// Still one load per key at a time in no-cache mode: readers that
	// join the flight share its query; those that come after it (a slow,
	// loaded test machine) have no cache to read and query again.
	require.GreaterOrEqual(t, rep.Cached.Burst.Queries, int64(1))
	require.LessOrEqual(t, rep.Cached.Burst.Queries, int64(100))
}

func TestDemoDown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"postgres", []string{"demo", "--database-url", "postgres://u:" + password + "@127.0.0.1:1/x", "--redis-url", testsvc.RedisURL(t)}},
		{"redis", []string{"demo", "--database-url", testsvc.DatabaseURL(t), "--redis-url", "redis://u:" + password + "@127.0.0.1:1/0"}},
		{"flags", []string{"demo", "--duration", "0s"}},
		{"write rate", []string{"demo", "--write-rate", "-1"}},
		{"write rate NaN", []string{"demo", "--write-rate", "NaN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := cli(t, tc.args...)
			require.Error(t, r.err)
			require.NotZero(t, r.code)
			require.Empty(t, r.stdout)
			requireNoSecret(t, r)
		})
	}
}

// TestDemoProgress: on a terminal the progress bar starts with the
// database and the seeding (slow on a first run), not after them; with
// --json nothing is drawn.
func TestDemoProgress(t *testing.T) {
	t.Parallel()
	terminal := func(io.Writer) bool { return true }
	args := demoArgs(t)
	r := cliWith(t, &env{lookupEnv: os.LookupEnv, terminal: terminal}, append(args[:1], args[2:]...)...) // without --json
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	require.Contains(t, r.stderr, "creating and migrating the demo database")
	require.Contains(t, r.stderr, "seeding")
	require.Contains(t, r.stdout, "consistency check passed", "the report is on stdout")

	r = cliWith(t, &env{lookupEnv: os.LookupEnv, terminal: terminal}, demoArgs(t)...)
	require.NoError(t, r.err)
	require.Empty(t, r.stderr, "--json draws no progress")
}
