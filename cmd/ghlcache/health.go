package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

// defaultHealthTimeout bounds each health check: connecting and one ping.
const defaultHealthTimeout = 2 * time.Second

var healthCommand = &command{
	name:    "health",
	summary: "check that Postgres and Redis answer, and how fast",
	help: `Connect to Postgres and to Redis (at once, each bounded by --timeout), ping
each, and print the ping latency and the time to connect. Exit with status 1
when either is down. --no-cache, or a REDIS_URL set but empty (the library's
no-cache mode), skips Redis.`,
	flags: func(fs *flag.FlagSet) runFunc {
		timeout := fs.Duration("timeout", defaultHealthTimeout, "bound on each check (connect and ping)")
		return func(ctx context.Context, e *env, _ []string) error {
			if *timeout <= 0 {
				return usagef("ghlcache health", "--timeout must be positive, not %s", *timeout)
			}
			return health(ctx, e, *timeout)
		}
	},
}

// probe is the outcome of one health check.
type probe struct {
	service string // "postgres", "redis"
	target  string // redacted URL
	connect time.Duration
	ping    time.Duration
	err     error  // nil: healthy
	skipped string // why the check did not run
}

// pinger connects to rawURL and pings it once within ctx, reporting the time
// each took.
type pinger func(ctx context.Context, rawURL string) (connect, ping time.Duration, err error)

func health(ctx context.Context, e *env, timeout time.Duration) error {
	probes := []*probe{
		{service: "postgres", target: e.databaseURL()},
		{service: "redis", target: e.redisURL()},
	}
	checks := []pinger{pingPostgres, pingRedis}
	switch why := e.noCache(); why {
	case "":
	case "--no-cache":
		probes[1].skipped = "skipped (--no-cache)"
	default:
		probes[1].skipped = "disabled (" + why + ": no-cache mode)"
	}

	var wg sync.WaitGroup
	for i, p := range probes {
		if p.skipped != "" {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			p.connect, p.ping, p.err = checks[i](ctx, p.target)
		})
	}
	wg.Wait()

	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	var down []string
	for _, p := range probes {
		raw := p.target
		p.target = redact.URL(raw)
		switch {
		case p.skipped != "":
			fmt.Fprintf(tw, "%s\t%s\t\t%s\n", p.service, p.skipped, p.target)
		case p.err != nil:
			reason := oneLine(redact.String(p.err.Error(), raw))
			fmt.Fprintf(tw, "%s\tDOWN\t\t%s\t%s\n", p.service, p.target, reason)
			down = append(down, p.service+" is down ("+reason+")")
		default:
			fmt.Fprintf(tw, "%s\tok\tping %s (connect %s)\t%s\n", p.service,
				formatLatency(p.ping), formatLatency(p.connect), p.target)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(down) > 0 {
		return fmt.Errorf("health: %s", strings.Join(down, "; "))
	}
	return nil
}

// pingPostgres opens one connection to rawURL and pings it.
func pingPostgres(ctx context.Context, rawURL string) (connect, ping time.Duration, err error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return 0, 0, invalidURL("database", rawURL, err)
	}
	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	connect = time.Since(start)
	start = time.Now()
	if err := conn.Ping(ctx); err != nil {
		return connect, 0, err
	}
	return connect, time.Since(start), nil
}

// pingRedis opens one connection to rawURL and pings it, without retries and
// honouring ctx's deadline on every socket operation. It is the one place to
// switch to cachelayer's Health.
func pingRedis(ctx context.Context, rawURL string) (connect, ping time.Duration, err error) {
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return 0, 0, invalidURL("redis", rawURL, err)
	}
	opts.ContextTimeoutEnabled = true // a socket read gives up at ctx's deadline
	opts.DialTimeout = time.Second
	opts.DialerRetries = 1
	opts.MaxRetries = -1 // -1, not 0, disables retries in go-redis
	opts.PoolSize = 1
	rdb := redis.NewClient(opts)
	defer rdb.Close()

	start := time.Now()
	if err := rdb.Ping(ctx).Err(); err != nil { // dials
		return 0, 0, err
	}
	connect = time.Since(start)
	start = time.Now()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return connect, 0, err
	}
	return connect, time.Since(start), nil
}

// formatLatency rounds d to three significant digits or so.
func formatLatency(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Millisecond).String()
	}
}
