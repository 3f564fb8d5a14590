package bench

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/db"
)

// Config describes a peer comparison. Zero fields take the defaults, which
// keep a run around two minutes on a 2-core machine.
type Config struct {
	DatabaseURL  string         // a database of its own for the bench (migrated by Run)
	RedisOptions *redis.Options // every system gets clients with these options
	Prefix       string         // full key prefix of the run, e.g. "ghl:bench:"; each system gets a sub-prefix

	Systems            []Kind        // default Kinds
	Users              int           // keys of the hit and 95/5 workloads (one balance each), 10 000
	Rounds             int           // rounds of every measurement, 3; results are medians
	Duration           time.Duration // of each timed run, 1 s
	Concurrency        []int         // goroutines of the hit-heavy workload, 1, 16, 64
	MixedGoroutines    int           // goroutines of the 95/5 workload, 16
	WriteFraction      float64       // of the mixed workload, 0.05
	StampedeGoroutines int           // readers of one cold key, 1000
	StampedeInstances  int           // instances of the multi-process stampede, 4
	StalenessKeys      int           // keys of the staleness probe, 100
	StalenessInstances int           // instances sharing them, 2
	StalenessWriters   int           // 4
	StalenessReaders   int           // 16
	StalenessDuration  time.Duration // 1 s
	ColdInstances      int           // instances of the cold read-only and 95/5 workloads, 2
	PoolConns          int32         // Postgres connections of each of those instances' pools; MixedGoroutines

	// Progress, if set, is called before each step with the number of
	// steps done and the total.
	Progress func(step string, done, total int)
	Logger   *slog.Logger // ghlcache's warnings; nil: discard
}

func (c *Config) defaults() {
	if len(c.Systems) == 0 {
		c.Systems = Kinds
	}
	c.Users = cmp.Or(c.Users, 10_000)
	c.Rounds = cmp.Or(c.Rounds, 3)
	c.Duration = cmp.Or(c.Duration, time.Second)
	if len(c.Concurrency) == 0 {
		c.Concurrency = []int{1, 16, 64}
	}
	c.MixedGoroutines = cmp.Or(c.MixedGoroutines, 16)
	c.WriteFraction = cmp.Or(c.WriteFraction, 0.05)
	c.StampedeGoroutines = cmp.Or(c.StampedeGoroutines, 1000)
	c.StampedeInstances = cmp.Or(c.StampedeInstances, 4)
	c.StalenessKeys = cmp.Or(c.StalenessKeys, 100)
	c.StalenessInstances = cmp.Or(c.StalenessInstances, 2)
	c.StalenessWriters = cmp.Or(c.StalenessWriters, 4)
	c.StalenessReaders = cmp.Or(c.StalenessReaders, 16)
	c.StalenessDuration = cmp.Or(c.StalenessDuration, time.Second)
	c.ColdInstances = cmp.Or(c.ColdInstances, 2)
	c.PoolConns = cmp.Or(c.PoolConns, int32(c.MixedGoroutines))
	c.Prefix = cmp.Or(c.Prefix, "ghl:bench:")
}

// FloorName is the name of the raw floor in results.
const FloorName = "redis GET+decode (floor)"

// Results is what Run measured. Every figure is the median over rounds.
type Results struct {
	Environment Environment   `json:"environment"`
	Settings    Settings      `json:"settings"`
	Hits        []HitRow      `json:"hit_heavy"`
	ReadOnly    []ColdRow     `json:"read_only_cold"` // Zipf reads from a cold cache
	Mixed       []ColdRow     `json:"mixed"`          // 95/5 from a cold cache
	Stampedes   []StampedeRow `json:"stampede"`
	Staleness   []StaleRow    `json:"staleness"`
	Elapsed     Duration      `json:"elapsed"`
}

// Environment names what the results were measured on.
type Environment struct {
	Date     string `json:"date"`
	Go       string `json:"go"`
	CPUs     int    `json:"cpus"`
	Redis    string `json:"redis"`
	Postgres string `json:"postgres"`
}

// Settings are the knobs of the run that shape the figures.
type Settings struct {
	Users              int      `json:"users"`
	Rounds             int      `json:"rounds"`
	Duration           Duration `json:"duration"`
	ZipfS              float64  `json:"zipf_s"`
	MixedGoroutines    int      `json:"mixed_goroutines"`
	WriteFraction      float64  `json:"write_fraction"`
	StampedeGoroutines int      `json:"stampede_goroutines"`
	StampedeInstances  int      `json:"stampede_instances"`
	StalenessKeys      int      `json:"staleness_keys"`
	StalenessInstances int      `json:"staleness_instances"`
	PoolConns          int32    `json:"postgres_pool_conns"` // of each instance of the cold workloads
	ColdInstances      int      `json:"cold_instances"`
	TTL                Duration `json:"ttl"`
}

// HitRow is one system at one concurrency of the hit-heavy workload.
type HitRow struct {
	System      string    `json:"system"`
	Goroutines  int       `json:"goroutines"`
	OpsPerSec   float64   `json:"ops_per_sec"`
	Mean        Duration  `json:"mean"`
	P50         Duration  `json:"p50"`
	P99         Duration  `json:"p99"`
	CPUPerOp    Duration  `json:"cpu_per_op"`      // this process
	VsFloor     float64   `json:"mean_vs_floor"`   // mean latency / the floor's
	P50VsFloor  float64   `json:"p50_vs_floor"`    // median latency / the floor's
	VsPostgres  float64   `json:"ops_vs_postgres"` // throughput / Postgres's
	RoundsOpsPS []float64 `json:"rounds_ops_per_sec"`
	Costs
}

// StampedeRow is one system on the cold-key stampede.
type StampedeRow struct {
	System     string   `json:"system"`
	Instances  int      `json:"instances"`
	Goroutines int      `json:"goroutines"`
	Queries    int64    `json:"queries"`     // median balance SELECTs per stampede
	MaxQueries int64    `json:"max_queries"` // worst round
	Rounds     []int64  `json:"rounds"`
	Wall       Duration `json:"wall"`
}

// StaleRow is one system on the staleness probe.
type StaleRow struct {
	System    string `json:"system"`
	Instances int    `json:"instances"`
	StaleKeys int    `json:"stale_keys"` // median keys left stale after quiescence
	MaxStale  int    `json:"max_stale_keys"`
	Written   int    `json:"written_keys"` // median keys written
	Writes    int64  `json:"writes"`
	Rounds    []int  `json:"rounds"`
}

// Duration is a time.Duration that marshals as a string ("1.2ms") and
// carries nanoseconds in Go.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

func (d Duration) String() string { return time.Duration(d).String() }

// Run seeds the data, builds every system and measures them in turn.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	cfg.defaults()
	begin := time.Now()
	counter := &QueryCounter{}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("bench: database URL: %w", err)
	}
	pcfg.ConnConfig.Tracer = counter
	nInst := max(cfg.StampedeInstances, cfg.StalenessInstances, 1)
	var pools []*pgxpool.Pool
	defer func() {
		for _, p := range pools {
			if p != nil {
				p.Close()
			}
		}
	}()
	nPools := max(nInst, cfg.ColdInstances)
	pools = make([]*pgxpool.Pool, nPools)
	for i := range pools {
		pc := pcfg.Copy()
		if i < cfg.ColdInstances {
			// Sized for the load: a small pool would cap "Postgres alone".
			pc.MaxConns = max(pc.MaxConns, cfg.PoolConns)
		}
		if pools[i], err = pgxpool.NewWithConfig(ctx, pc); err != nil {
			return nil, fmt.Errorf("bench: connect to postgres: %w", err)
		}
	}
	pool := pools[0]
	if err := db.Migrate(ctx, pool); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	res := &Results{Environment: environment(ctx, pool, cfg.RedisOptions)}
	res.Settings = Settings{
		Users: cfg.Users, Rounds: cfg.Rounds, Duration: Duration(cfg.Duration), ZipfS: DefaultZipfS,
		MixedGoroutines: cfg.MixedGoroutines, WriteFraction: cfg.WriteFraction,
		StampedeGoroutines: cfg.StampedeGoroutines, StampedeInstances: cfg.StampedeInstances,
		StalenessKeys: cfg.StalenessKeys, StalenessInstances: cfg.StalenessInstances,
		PoolConns: max(pcfg.MaxConns, cfg.PoolConns), ColdInstances: cfg.ColdInstances, TTL: Duration(balanceTTL),
	}

	// Seed: the hot users, then cold users for the stampedes and fresh keys
	// for each staleness probe, so no measurement sees another's leftovers.
	const typ = credits.Type("enrichment")
	nSys := len(cfg.Systems)
	nCold := cfg.Rounds * nSys * 2
	nStale := cfg.Rounds * nSys * cfg.StalenessKeys
	first, err := SeedBalances(ctx, pool, cfg.Users+nCold+nStale, []credits.Type{typ})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	keyRange := func(from, n int) []Key {
		ks := make([]Key, n)
		for i := range ks {
			ks[i] = Key{UserID: first + int64(from+i), Type: typ}
		}
		return ks
	}
	hot := keyRange(0, cfg.Users)
	cold := keyRange(cfg.Users, nCold)
	staleKeys := keyRange(cfg.Users+nCold, nStale)

	// Every system, nInst instances each, under a prefix of its own.
	runID := fmt.Sprintf("%x:", time.Now().UnixNano()&0xffffffff)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cleanerClient := redis.NewClient(cfg.RedisOptions)
	defer cleanerClient.Close()
	cleaner := cachelayer.New(cleanerClient, &cachelayer.Config{Prefix: cfg.Prefix, Logger: logger})
	defer cleaner.Close()
	defer func() { _, _ = cleaner.DeletePrefix(context.WithoutCancel(ctx), runID) }()
	redisCounters := make(map[Kind]*RedisCounter, nSys)
	for _, k := range cfg.Systems {
		redisCounters[k] = &RedisCounter{}
	}
	// The long-lived instances of every system (hit-heavy, stampedes,
	// staleness probes) are open only for those workloads: while another
	// system's cold workloads run, no ghlcache namespace of theirs is live,
	// so no system's writes pay trigger rows and notifications for caches
	// not under test (see runFresh). Their entries stay in Redis between.
	systems := make(map[Kind][]System, nSys)
	closeSystems := func() error {
		for k, insts := range systems {
			for _, s := range insts {
				_ = s.Close()
			}
			delete(systems, k)
		}
		return forgetNamespaces(context.WithoutCancel(ctx), pool, cfg.Prefix, "")
	}
	defer func() { _ = closeSystems() }()
	openSystems := func() error {
		for _, k := range cfg.Systems {
			for i := range nInst {
				s, err := NewSystem(k, SystemEnv{
					Pool: pools[i], RedisOptions: cfg.RedisOptions,
					Prefix: cfg.Prefix + runID + systemSlug(k) + ":", Logger: cfg.Logger, RedisCounter: redisCounters[k],
				})
				if err != nil {
					return err
				}
				systems[k] = append(systems[k], s)
			}
		}
		return nil
	}
	if err := openSystems(); err != nil {
		return nil, err
	}
	store := credits.NewStore(pool)
	truth := func(ctx context.Context, k Key) (credits.Balance, error) { return store.Balance(ctx, k.UserID, k.Type) }
	floor := NewFloor(cfg.RedisOptions, cfg.Prefix+runID+"floor:")
	floorCounter := &RedisCounter{}
	floor.rdb.AddHook(floorCounter)
	defer floor.Close()

	steps := 1 + cfg.Rounds*(len(cfg.Concurrency)*(nSys+1)+nSys*5)
	done := 0
	step := func(name string) error {
		if cfg.Progress != nil {
			cfg.Progress(name, done, steps)
		}
		done++
		return ctx.Err()
	}

	// Warm every cache with every hot key, and fill the floor's keys.
	if err := step("warm caches"); err != nil {
		return nil, err
	}
	bals, err := warm(ctx, hot, truth, systems, cfg.Systems)
	if err != nil {
		return nil, err
	}
	if err := floor.Fill(ctx, bals); err != nil {
		return nil, fmt.Errorf("bench: fill floor keys: %w", err)
	}

	hits := map[string]map[int][]hitRun{} // system → goroutines → rounds
	readOnly, mixed := map[Kind][]freshResult{}, map[Kind][]freshResult{}
	freshEnvs := func(k Kind, tag string) []SystemEnv {
		envs := make([]SystemEnv, cfg.ColdInstances)
		for i := range envs {
			envs[i] = SystemEnv{Pool: pools[i], RedisOptions: cfg.RedisOptions, Logger: cfg.Logger, RedisCounter: redisCounters[k],
				Prefix: cfg.Prefix + runID + systemSlug(k) + ":" + tag + ":"}
		}
		return envs
	}
	stampedes := map[Kind]map[int][]StampedeResult{}
	stale := map[Kind][]StalenessResult{}
	coldNext, staleNext := 0, 0
	for round := range cfg.Rounds {
		if err := Vacuum(ctx, pool); err != nil { // each round on tables as autovacuum keeps them
			return nil, err
		}
		order := rotate(cfg.Systems, round)
		if round > 0 {
			if err := openSystems(); err != nil {
				return nil, err
			}
		}
		for _, g := range cfg.Concurrency {
			readers := []string{FloorName}
			for _, k := range order {
				readers = append(readers, string(k))
			}
			for _, name := range readers {
				if err := step(fmt.Sprintf("round %d: hit-heavy, %d goroutines, %s", round+1, g, name)); err != nil {
					return nil, err
				}
				read, rc, hc := floor.Balance, floorCounter, []HitCounter(nil)
				if name != FloorName {
					sys := systems[Kind(name)][0]
					read, rc = sys.Balance, redisCounters[Kind(name)]
					if h, ok := sys.(HitCounter); ok {
						hc = []HitCounter{h}
					}
				}
				load := MixedLoad{Keys: hot, Goroutines: g, Duration: cfg.Duration, Seed: uint64(round*1000 + g)}
				m := StartMeter(counter, rc, hc)
				r, err := load.Run(ctx, read, nil)
				if err != nil {
					return nil, fmt.Errorf("bench: hit-heavy %s: %w", name, err)
				}
				if hits[name] == nil {
					hits[name] = map[int][]hitRun{}
				}
				hits[name][g] = append(hits[name][g], hitRun{r, m.Stop(r.Reads, 0, r.CPU)})
			}
		}
		if err := closeSystems(); err != nil {
			return nil, err
		}
		for _, k := range order {
			if err := step(fmt.Sprintf("round %d: read-only Zipf from cold, %s", round+1, k)); err != nil {
				return nil, err
			}
			load := MixedLoad{Keys: hot, Goroutines: cfg.MixedGoroutines, Duration: cfg.Duration, Seed: uint64(round*1000 + 5)}
			r, err := runFresh(ctx, k, freshEnvs(k, fmt.Sprintf("ro%d", round)), load, counter, cfg.Prefix)
			if err != nil {
				return nil, fmt.Errorf("bench: read-only from cold %s: %w", k, err)
			}
			readOnly[k] = append(readOnly[k], r)
			if err := step(fmt.Sprintf("round %d: 95/5 read/write from cold, %s", round+1, k)); err != nil {
				return nil, err
			}
			load.WriteFraction, load.Seed = cfg.WriteFraction, uint64(round*1000+7)
			if r, err = runFresh(ctx, k, freshEnvs(k, fmt.Sprintf("mx%d", round)), load, counter, cfg.Prefix); err != nil {
				return nil, fmt.Errorf("bench: 95/5 %s: %w", k, err)
			}
			mixed[k] = append(mixed[k], r)
		}
		if err := openSystems(); err != nil {
			return nil, err
		}
		for _, k := range order {
			for _, n := range []int{1, cfg.StampedeInstances} {
				if err := step(fmt.Sprintf("round %d: stampede, %d instance(s), %s", round+1, n, k)); err != nil {
					return nil, err
				}
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				var reads []ReadFunc
				for _, s := range systems[k][:n] {
					reads = append(reads, s.Balance)
				}
				r, err := Stampede(sctx, reads, cold[coldNext], cfg.StampedeGoroutines, counter)
				cancel()
				coldNext++
				if err != nil {
					return nil, fmt.Errorf("bench: %s: %w", k, err)
				}
				if stampedes[k] == nil {
					stampedes[k] = map[int][]StampedeResult{}
				}
				stampedes[k][n] = append(stampedes[k][n], r)
			}
		}
		for _, k := range order {
			if err := step(fmt.Sprintf("round %d: staleness probe, %s", round+1, k)); err != nil {
				return nil, err
			}
			keys := staleKeys[staleNext : staleNext+cfg.StalenessKeys]
			staleNext += cfg.StalenessKeys
			r, err := StalenessProbe(ctx, systems[k][:cfg.StalenessInstances], truth, keys,
				cfg.StalenessWriters, cfg.StalenessReaders, cfg.StalenessDuration, uint64(round))
			if err != nil {
				return nil, fmt.Errorf("bench: %s: %w", k, err)
			}
			stale[k] = append(stale[k], r)
		}
		if err := closeSystems(); err != nil {
			return nil, err
		}
	}

	res.Hits = hitRows(hits, cfg)
	for _, k := range cfg.Systems {
		res.ReadOnly = append(res.ReadOnly, coldRow(k, cfg.ColdInstances, readOnly[k]))
		res.Mixed = append(res.Mixed, coldRow(k, cfg.ColdInstances, mixed[k]))
	}
	for _, n := range []int{1, cfg.StampedeInstances} {
		for _, k := range cfg.Systems {
			rs := stampedes[k][n]
			row := StampedeRow{System: string(k), Instances: n, Goroutines: cfg.StampedeGoroutines}
			for _, r := range rs {
				row.Rounds = append(row.Rounds, r.Queries)
				row.MaxQueries = max(row.MaxQueries, r.Queries)
			}
			row.Queries = int64(median(rs, func(r StampedeResult) float64 { return float64(r.Queries) }))
			row.Wall = Duration(median(rs, func(r StampedeResult) float64 { return float64(r.Wall) }))
			res.Stampedes = append(res.Stampedes, row)
		}
	}
	for _, k := range cfg.Systems {
		rs := stale[k]
		row := StaleRow{System: string(k), Instances: cfg.StalenessInstances}
		for _, r := range rs {
			row.Rounds = append(row.Rounds, r.StaleKeys)
			row.MaxStale = max(row.MaxStale, r.StaleKeys)
		}
		row.StaleKeys = int(median(rs, func(r StalenessResult) float64 { return float64(r.StaleKeys) }))
		row.Written = int(median(rs, func(r StalenessResult) float64 { return float64(r.Written) }))
		row.Writes = int64(median(rs, func(r StalenessResult) float64 { return float64(r.Writes) }))
		res.Staleness = append(res.Staleness, row)
	}
	if cfg.Progress != nil {
		cfg.Progress("done", steps, steps)
	}
	res.Elapsed = Duration(time.Since(begin).Round(time.Millisecond))
	return res, nil
}

// hitRows summarises the hit-heavy runs: medians, and ratios to the floor
// and to Postgres at the same concurrency.
// hitRun is one round of the hit-heavy workload.
type hitRun struct {
	*LoadResult
	costs Costs
}

func hitRows(hits map[string]map[int][]hitRun, cfg Config) []HitRow {
	var rows []HitRow
	names := []string{FloorName}
	for _, k := range cfg.Systems {
		names = append(names, string(k))
	}
	for _, g := range cfg.Concurrency {
		var floorMean, floorP50, pgOps float64
		start := len(rows)
		for _, name := range names {
			rs := hits[name][g]
			row := HitRow{System: name, Goroutines: g}
			for _, r := range rs {
				row.RoundsOpsPS = append(row.RoundsOpsPS, r.ReadsPerSec())
			}
			row.OpsPerSec = median(rs, func(r hitRun) float64 { return r.ReadsPerSec() })
			row.Mean = Duration(median(rs, func(r hitRun) float64 { return float64(r.ReadLatency.Mean()) }))
			row.P50 = Duration(median(rs, func(r hitRun) float64 { return float64(r.ReadLatency.Quantile(0.5)) }))
			row.P99 = Duration(median(rs, func(r hitRun) float64 { return float64(r.ReadLatency.Quantile(0.99)) }))
			row.CPUPerOp = Duration(median(rs, func(r hitRun) float64 {
				return float64(r.CPU.Process) / float64(max(r.Reads, 1))
			}))
			cs := make([]Costs, len(rs))
			for i, r := range rs {
				cs[i] = r.costs
			}
			row.Costs = medianCosts(cs)
			if name == FloorName {
				floorMean, floorP50 = float64(row.Mean), float64(row.P50)
			}
			if name == string(KindPostgres) {
				pgOps = row.OpsPerSec
			}
			rows = append(rows, row)
		}
		for i := start; i < len(rows); i++ {
			if floorMean > 0 {
				rows[i].VsFloor = float64(rows[i].Mean) / floorMean
				rows[i].P50VsFloor = float64(rows[i].P50) / floorP50
			}
			if pgOps > 0 {
				rows[i].VsPostgres = rows[i].OpsPerSec / pgOps
			}
		}
	}
	return rows
}

// warm reads every key once through every cached system (16 at a time) and
// returns the balances as Postgres has them.
func warm(ctx context.Context, keys []Key, truth ReadFunc, systems map[Kind][]System, kinds []Kind) ([]credits.Balance, error) {
	bals := make([]credits.Balance, len(keys))
	readers := []ReadFunc{truth}
	for _, k := range kinds {
		if k.Cached() {
			readers = append(readers, systems[k][0].Balance)
		}
	}
	for ri, read := range readers {
		err := ForEach(ctx, len(keys), 16, nil, func(ctx context.Context, i int) error {
			b, err := read(ctx, keys[i])
			if ri == 0 {
				bals[i] = b
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("bench: warm caches: %w", err)
		}
	}
	return bals, nil
}

// environment describes the machine and the services.
func environment(ctx context.Context, pool *pgxpool.Pool, ropts *redis.Options) Environment {
	env := Environment{Date: time.Now().UTC().Format("2006-01-02"), Go: runtime.Version(), CPUs: runtime.NumCPU()}
	var v string
	if err := pool.QueryRow(ctx, "SHOW server_version").Scan(&v); err == nil {
		env.Postgres = strings.Fields(v)[0]
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	if info, err := rdb.Info(ctx, "server").Result(); err == nil {
		env.Redis = InfoField(info, "redis_version")
	}
	return env
}

// InfoField returns the value of field in the text of a Redis INFO reply.
func InfoField(info, field string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

func systemSlug(k Kind) string {
	return strings.NewReplacer("/", "-", "+", "-").Replace(string(k))
}

// rotate returns kinds starting at round modulo their number, so that no
// system always runs first (on a warm or a cold machine).
func rotate(kinds []Kind, round int) []Kind {
	n := len(kinds)
	out := make([]Kind, 0, n)
	for i := range n {
		out = append(out, kinds[(i+round)%n])
	}
	return out
}

// median returns the median of f over xs (0 for none).
func median[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	vs := make([]float64, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2]
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
}
