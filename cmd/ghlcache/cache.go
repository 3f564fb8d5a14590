package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/cmd/ghlcache/internal/bench"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

// defaultCacheTimeout bounds each cache command.
const defaultCacheTimeout = 10 * time.Second

var cacheCommand = &command{
	name:    "cache",
	summary: "inspect and clear cached entries (get, del, del-prefix, stats)",
	help: `Operator commands on the Redis cache. Keys are given without the namespace,
as the library's callers write them ("credits:7:enrichment"); the cache adds
--prefix ("ghl:" by default). These commands need Redis (no --no-cache).`,
	subcommands: []*command{cacheGetCommand, cacheDelCommand, cacheDelPrefixCommand, cacheStatsCommand},
}

// cacheFlags are the flags every cache subcommand has.
type cacheFlags struct {
	prefix  string
	timeout time.Duration
}

func (f *cacheFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.prefix, "prefix", "ghl:", "namespace the cache adds to every key")
	fs.DurationVar(&f.timeout, "timeout", defaultCacheTimeout, "bound on the whole command")
}

// parseInterspersed parses the flags that follow positional arguments in
// args (fs has parsed those before them) and returns the positionals. "--"
// ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		if strings.HasPrefix(args[0], "-") && args[0] != "-" {
			if err := fs.Parse(args); err != nil {
				return nil, err
			}
			args = fs.Args()
			continue
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return pos, nil
}

// cacheConn is an open cache plus a plain client for what the cache's API
// does not expose (INFO, SCAN counts, raw counters).
type cacheConn struct {
	cache *cachelayer.Cache
	rdb   *redis.Client
	flags cacheFlags
}

func (c *cacheConn) close() {
	_ = c.cache.Close()
	_ = c.rdb.Close()
}

// openCache connects to Redis for a cache subcommand and checks that it
// answers.
func openCache(ctx context.Context, e *env, name string, f cacheFlags) (*cacheConn, error) {
	path := "ghlcache cache " + name
	if f.timeout <= 0 {
		return nil, usagef(path, "--timeout must be positive, not %s", f.timeout)
	}
	opts, err := redisOptions(e, "cache "+name)
	if err != nil {
		return nil, err
	}
	raw := e.redisURL()
	cache, err := cachelayer.Open(ctx, raw, &cachelayer.Config{
		Prefix: f.prefix, Logger: slog.New(slog.DiscardHandler),
		OpTimeout: time.Second, // an operator's single call may wait longer than a service's read
	})
	if err != nil {
		return nil, redact.Wrap(raw, err, "redis")
	}
	if h := cache.Health(ctx); !h.Healthy {
		_ = cache.Close()
		return nil, fmt.Errorf("redis %s is down: %s", redact.URL(raw), oneLine(redact.String(h.Err, raw)))
	}
	return &cacheConn{cache: cache, rdb: redis.NewClient(opts), flags: f}, nil
}

// withCache runs fn with an open cache, bounded by --timeout. Flags may
// also follow the positional arguments ("cache get KEY --prefix x:").
func withCache(name string, fs *flag.FlagSet, f *cacheFlags, fn func(ctx context.Context, e *env, c *cacheConn, args []string) error) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		args, err := parseInterspersed(fs, args)
		if err != nil {
			return usagef("ghlcache cache "+name, "%v", err)
		}
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		c, err := openCache(ctx, e, name, *f)
		if err != nil {
			return err
		}
		defer c.close()
		return fn(ctx, e, c, args)
	}
}

var cacheGetCommand = &command{
	name:    "get",
	args:    "<key>",
	summary: "show a cached value, decoded, and its TTL",
	help: `Print the value cached under key (without the namespace) as indented JSON,
with its remaining TTL. A cached "not found" marker and Incr/Allow counters
are shown as such. Exit with status 1 when nothing is cached under key.`,
	flags: func(fs *flag.FlagSet) runFunc {
		var f cacheFlags
		f.register(fs)
		return withCache("get", fs, &f, cacheGet)
	},
}

func cacheGet(ctx context.Context, e *env, c *cacheConn, args []string) error {
	if len(args) != 1 {
		return usagef("ghlcache cache get", "want exactly one key, got %d", len(args))
	}
	key := args[0]
	full := c.cache.FullKey(key)
	var value json.RawMessage
	found, err := c.cache.Get(ctx, key, &value)
	if err != nil && strings.HasPrefix(key, "credits:") {
		// Balances are stored in their compact form, not as JSON: decode
		// one as a credits.Balance and show it as JSON.
		var b credits.Balance
		if f, berr := c.cache.Get(ctx, key, &b); berr == nil {
			found, err = f, nil
			value, _ = json.Marshal(b)
		}
	}
	switch {
	case errors.Is(err, cachelayer.ErrNotFound):
		ttl, _ := c.rdb.PTTL(ctx, full).Result()
		fmt.Fprintf(e.stdout, "key    %s\nvalue  (cached \"not found\" marker: the loader found nothing)\nttl    %s\n", full, formatTTL(ttl))
		return nil
	case errors.Is(err, cachelayer.ErrInvalid):
		return usagef("ghlcache cache get", "%v", err)
	case err != nil:
		// Not an entry of the cache's format: a counter of Incr or Allow?
		if raw, rerr := c.rdb.Get(ctx, full).Result(); rerr == nil {
			if n, perr := strconv.ParseInt(raw, 10, 64); perr == nil {
				ttl, _ := c.rdb.PTTL(ctx, full).Result()
				fmt.Fprintf(e.stdout, "key    %s\nvalue  %d (counter)\nttl    %s\n", full, n, formatTTL(ttl))
				return nil
			}
		}
		return fmt.Errorf("cache get %s: %w", full, err)
	case !found:
		return fmt.Errorf("cache get %s: not cached", full)
	}
	ttl, err := c.cache.TTL(ctx, key)
	if err != nil && !errors.Is(err, cachelayer.ErrNotFound) {
		return fmt.Errorf("cache get %s: ttl: %w", full, err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, value, "       ", "  "); err != nil {
		pretty.Reset()
		pretty.Write(value)
	}
	fmt.Fprintf(e.stdout, "key    %s\nttl    %s\nvalue  %s\n", full, formatTTL(ttl), pretty.String())
	return nil
}

// formatTTL prints a Redis PTTL-style duration.
func formatTTL(d time.Duration) string {
	switch {
	case d == cachelayer.NoExpiry:
		return "none (no expiry)"
	case d < 0:
		return "—"
	default:
		return d.Round(time.Millisecond).String()
	}
}

var cacheDelCommand = &command{
	name:    "del",
	args:    "<key>...",
	summary: "delete cached keys (and void fills in progress)",
	help: `Delete each key (without the namespace) from the cache, as an invalidation
does: a fill of a value loaded before the delete is rejected. The next read
loads from Postgres.`,
	flags: func(fs *flag.FlagSet) runFunc {
		var f cacheFlags
		f.register(fs)
		return withCache("del", fs, &f, cacheDel)
	},
}

func cacheDel(ctx context.Context, e *env, c *cacheConn, keys []string) error {
	if len(keys) == 0 {
		return usagef("ghlcache cache del", "want at least one key")
	}
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = c.cache.FullKey(k)
	}
	existed, _ := c.rdb.Exists(ctx, full...).Result()
	if err := c.cache.Delete(ctx, keys...); err != nil {
		if errors.Is(err, cachelayer.ErrInvalid) {
			return usagef("ghlcache cache del", "%v", err)
		}
		return fmt.Errorf("cache del: %w", err)
	}
	fmt.Fprintf(e.stdout, "deleted %d key(s) (%d existed): %s\n", len(full), existed, strings.Join(full, " "))
	return nil
}

var cacheDelPrefixCommand = &command{
	name:    "del-prefix",
	args:    "<prefix>",
	summary: "delete every cached key that starts with a prefix (needs --yes)",
	help: `Delete every key under the namespace that starts with prefix, e.g.
"credits:7:" for one user's balances. The prefix is literal (glob characters
are not special). Without --yes, only count the keys it would delete and
exit with status 2.`,
	flags: func(fs *flag.FlagSet) runFunc {
		var f cacheFlags
		f.register(fs)
		yes := fs.Bool("yes", false, "really delete")
		return withCache("del-prefix", fs, &f, func(ctx context.Context, e *env, c *cacheConn, args []string) error {
			return cacheDelPrefix(ctx, e, c, args, *yes)
		})
	},
}

func cacheDelPrefix(ctx context.Context, e *env, c *cacheConn, args []string, yes bool) error {
	const path = "ghlcache cache del-prefix"
	if len(args) != 1 || args[0] == "" {
		return usagef(path, "want exactly one non-empty prefix")
	}
	full := c.cache.FullKey(args[0])
	if !yes {
		n, err := countKeys(ctx, c.rdb, full, nil)
		if err != nil {
			return fmt.Errorf("cache del-prefix: count %s*: %w", full, err)
		}
		return usagef(path, "would delete %d key(s) under %s; add --yes to delete them", n, full)
	}
	n, err := c.cache.DeletePrefix(ctx, args[0])
	if err != nil {
		return fmt.Errorf("cache del-prefix %s: deleted %d key(s), then: %w", full, n, err)
	}
	fmt.Fprintf(e.stdout, "deleted %d key(s) under %s\n", n, full)
	return nil
}

// countKeys counts the keys that start with prefix (SCAN, never KEYS),
// adding each to byGroup (if not nil) under the segment after prefix up to
// its first ':'.
func countKeys(ctx context.Context, rdb *redis.Client, prefix string, byGroup map[string]int64) (int64, error) {
	var n int64
	iter := rdb.Scan(ctx, 0, cachelayer.MatchPrefix(prefix), 1000).Iterator()
	for iter.Next(ctx) {
		n++
		if byGroup != nil {
			rest := strings.TrimPrefix(iter.Val(), prefix)
			group, _, _ := strings.Cut(rest, ":")
			byGroup[group]++
		}
	}
	return n, iter.Err()
}

var cacheStatsCommand = &command{
	name:    "stats",
	summary: "probe the cache and show its counters, Redis memory and key counts",
	help: `Run a short probe through the cache (set, fetch, get, exists, ttl, delete of
a key of its own under "cli:probe:"), print the cache's Stats for it, Redis's
INFO memory figures, and the number of keys under the namespace (SCAN),
grouped by their first segment (credits, workflow, rate, …).`,
	flags: func(fs *flag.FlagSet) runFunc {
		var f cacheFlags
		f.register(fs)
		return withCache("stats", fs, &f, cacheStats)
	},
}

func cacheStats(ctx context.Context, e *env, c *cacheConn, _ []string) error {
	key := fmt.Sprintf("cli:probe:%d", time.Now().UnixNano())
	start := time.Now()
	err := errors.Join(
		c.cache.Set(ctx, key, map[string]string{"probe": "ghlcache cache stats"}, time.Minute),
		func() error {
			_, err := cachelayer.Fetch(ctx, c.cache, key, time.Minute, func(context.Context) (map[string]string, error) {
				return nil, errors.New("the probe's value vanished")
			})
			return err
		}(),
		func() error { var v map[string]string; _, err := c.cache.Get(ctx, key, &v); return err }(),
		func() error { _, err := c.cache.Exists(ctx, key); return err }(),
		func() error { _, err := c.cache.TTL(ctx, key); return err }(),
		c.cache.Delete(ctx, key),
	)
	probe := time.Since(start)
	if err != nil {
		return fmt.Errorf("cache stats: probe: %w", err)
	}
	h := c.cache.Health(ctx)
	st := c.cache.Stats()

	w := e.stdout
	fmt.Fprintf(w, "probe  6 calls in %s, ping %s\n\n", formatLatency(probe), formatLatency(h.Latency))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "cache stats (this probe)\t")
	for _, kv := range []struct {
		k string
		v any
	}{
		{"available", st.Available}, {"breaker open", st.BreakerOpen},
		{"hits", st.Hits}, {"misses", st.Misses}, {"loads", st.Loads}, {"loads shared", st.LoadsShared},
		{"lease waits", st.LeaseWaits}, {"stale fills rejected", st.StaleFillsRejected},
		{"corrupt", st.Corrupt}, {"oversize", st.Oversize}, {"redis errors", st.RedisErrors},
		{"fallbacks", st.Fallbacks}, {"bypasses", st.Bypasses}, {"invalidations", st.Invalidations},
		{"invalidation failures", st.InvalidationFailures}, {"recoveries", st.Recoveries},
	} {
		fmt.Fprintf(tw, "  %s\t%v\n", kv.k, kv.v)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	info, err := c.rdb.Info(ctx, "server", "memory", "stats").Result()
	if err != nil {
		return fmt.Errorf("cache stats: INFO: %w", err)
	}
	fmt.Fprintln(w, "\nredis")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, f := range []string{"redis_version", "used_memory_human", "used_memory_peak_human", "maxmemory_human",
		"maxmemory_policy", "mem_fragmentation_ratio", "evicted_keys", "expired_keys", "keyspace_hits", "keyspace_misses"} {
		if v := bench.InfoField(info, f); v != "" {
			fmt.Fprintf(tw, "  %s\t%s\n", f, v)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	groups := map[string]int64{}
	n, err := countKeys(ctx, c.rdb, c.flags.prefix, groups)
	if err != nil {
		return fmt.Errorf("cache stats: SCAN %s*: %w", c.flags.prefix, err)
	}
	fmt.Fprintf(w, "\nkeys under %q: %d\n", c.flags.prefix, n)
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	slices.Sort(names)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, g := range names {
		fmt.Fprintf(tw, "  %s:*\t%d\t\n", g, groups[g])
	}
	return tw.Flush()
}
