package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/dbq"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/redact"
	"github.com/ghl-agency/ghlcache/workflows"
)

// defaultOutboxTimeout bounds each outbox command.
const defaultOutboxTimeout = 30 * time.Second

var outboxCommand = &command{
	name:    "outbox",
	summary: "inspect and sweep the invalidation outbox (status, sweep)",
	help: `Operator commands on the invalidation outbox (the cache_outbox table). Every
change of a balance or a workflow definition, made through the library or by
any SQL, writes there the cache keys to delete; every cached repository
sweeps it when notified (LISTEN) and every few seconds.`,
	subcommands: []*command{outboxStatusCommand, outboxSweepCommand},
}

// outboxDomain is what the commands need of a domain.
type outboxDomain struct {
	name   string        // cache_outbox.domain
	tables []string      // whose triggers write its rows
	maxAge time.Duration // its default TTL + 1 min: how long done rows are kept
}

var outboxDomains = []outboxDomain{
	{credits.OutboxDomain, []string{"credit_balances"}, cachelayer.TTLShort + time.Minute},
	{workflows.OutboxDomain, []string{"workflow_definitions"}, cachelayer.TTLMedium + time.Minute},
}

var outboxStatusCommand = &command{
	name:    "status",
	summary: "waiting rows and oldest row age per domain, live namespaces, LISTEN connections",
	help: `For each domain: the rows waiting for their keys' deletes and the age of the
oldest, the cache namespaces (key prefixes) the triggers write rows for, and
how many connections LISTEN on the domain's channel (one per running cached
repository). This process then LISTENs itself once, to show that
notifications can be received. Needs only Postgres.`,
	flags: func(fs *flag.FlagSet) runFunc {
		timeout := fs.Duration("timeout", defaultOutboxTimeout, "bound on the whole command")
		return withPool("outbox status", timeout, outboxStatus)
	},
}

var outboxSweepCommand = &command{
	name:    "sweep",
	summary: "sweep every domain's waiting rows now",
	help: `Claim the waiting rows of each domain (as a cached repository's sweeper
does, alongside them), delete their keys from Redis and mark the rows done.
Rows whose deletes fail keep waiting. Needs Postgres and Redis.`,
	flags: func(fs *flag.FlagSet) runFunc {
		timeout := fs.Duration("timeout", defaultOutboxTimeout, "bound on the whole command")
		return withPool("outbox sweep", timeout, outboxSweep)
	},
}

// withPool runs fn with a Postgres pool, bounded by timeout.
func withPool(path string, timeout *time.Duration, fn func(ctx context.Context, e *env, pool *pgxpool.Pool) error) runFunc {
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("ghlcache "+path, "unexpected argument %q", args[0])
		}
		if *timeout <= 0 {
			return usagef("ghlcache "+path, "--timeout must be positive, not %s", *timeout)
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		pool, err := openPool(ctx, e.databaseURL())
		if err != nil {
			return err
		}
		defer pool.Close()
		applied, err := db.AppliedVersion(ctx, pool)
		if err != nil {
			return redact.Wrap(e.databaseURL(), err, "%s", path)
		}
		if latest := db.LatestVersion(); applied < latest {
			return fmt.Errorf("%s: %s is at schema version %d, this build needs %d: run ghlcache migrate up", path, redact.URL(e.databaseURL()), applied, latest)
		}
		return fn(ctx, e, pool)
	}
}

func outboxStatus(ctx context.Context, e *env, pool *pgxpool.Pool) error {
	q := dbq.New(pool)
	depths, err := q.CacheOutboxDomainStats(ctx)
	if err != nil {
		return redact.Wrap(e.databaseURL(), err, "outbox status")
	}
	byDomain := map[string]dbq.CacheOutboxDomainStatsRow{}
	for _, d := range depths {
		byDomain[d.Domain] = d
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "domain\twaiting\toldest\tlisteners\tlive namespaces")
	for _, d := range outboxDomains {
		live, err := q.CacheNamespaceLive(ctx, d.name)
		if err != nil {
			return redact.Wrap(e.databaseURL(), err, "outbox status")
		}
		var listeners int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query = 'LISTEN ' || $1`,
			pgx.Identifier{outbox.Channel(d.name)}.Sanitize()).Scan(&listeners); err != nil {
			return redact.Wrap(e.databaseURL(), err, "outbox status")
		}
		names := ""
		for i, n := range live {
			if i > 0 {
				names += ", "
			}
			names += fmt.Sprintf("%q (until %s)", n.Prefix, n.LiveUntil.UTC().Format(time.TimeOnly))
		}
		if names == "" {
			names = "none (nothing caches this domain: no rows are written)"
		}
		st := byDomain[d.name]
		oldest := "-"
		if st.Depth > 0 {
			oldest = (time.Duration(st.OldestAgeSeconds * float64(time.Second))).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", d.name, st.Depth, oldest, listeners, names)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// This process's own LISTEN: can a sweeper here be notified?
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return redact.Wrap(e.databaseURL(), err, "outbox status")
	}
	defer conn.Release()
	ch := outbox.Channel(outboxDomains[0].name)
	listen := "ok"
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
		listen = "failed: " + oneLine(redact.String(err.Error(), e.databaseURL()))
	} else {
		_, _ = conn.Exec(ctx, "UNLISTEN "+pgx.Identifier{ch}.Sanitize())
	}
	fmt.Fprintf(e.stdout, "this process: LISTEN %s\n", listen)
	return nil
}

func outboxSweep(ctx context.Context, e *env, pool *pgxpool.Pool) error {
	if why := e.noCache(); why != "" {
		return usagef("ghlcache outbox sweep", "needs Redis to delete keys (%s)", why)
	}
	raw := e.redisURL()
	cache, err := cachelayer.Open(ctx, raw, &cachelayer.Config{Logger: slog.New(slog.DiscardHandler), OpTimeout: time.Second})
	if err != nil {
		return redact.Wrap(raw, err, "redis")
	}
	defer cache.Close()
	if h := cache.Health(ctx); !h.Healthy {
		return fmt.Errorf("redis %s is down: %s", redact.URL(raw), oneLine(redact.String(h.Err, raw)))
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "domain\tswept\tstill waiting")
	var errs []error
	for _, d := range outboxDomains {
		ob := outbox.New(pool, cache, outbox.Config{
			Domain: d.name, Tables: d.tables, MaxAge: d.maxAge, NoListen: true, NoNamespace: true,
			Interval: time.Hour, IdleInterval: time.Hour, Logger: slog.New(slog.DiscardHandler),
		})
		err := ob.Sweep(ctx)
		st, serr := ob.Stats(ctx)
		_ = ob.Close()
		if err = errors.Join(err, serr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s", d.name, oneLine(redact.String(redact.String(err.Error(), raw), e.databaseURL()))))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\n", d.name, st.Swept, st.Depth)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(errs) > 0 {
		return fmt.Errorf("outbox sweep: %w", errors.Join(errs...))
	}
	return nil
}
