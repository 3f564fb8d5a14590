package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
)

// The demo on a fresh laptop: when the Postgres or the Redis it would use
// is the default one (no flag, no environment variable) and nothing answers
// there, it starts what is missing in Docker with testcontainers-go, says
// so, and removes the containers at the end; with no Docker engine either,
// it prints how to get them, in two lines.

// containerStarter starts the services the demo misses and returns their
// URLs ("" for a service it was not asked for) and a function that removes
// them. It returns an error that Is errNoDocker when no Docker engine
// answers. progress receives a line per step.
type containerStarter func(ctx context.Context, postgres, redis bool, progress io.Writer) (databaseURL, redisURL string, stop func(context.Context) error, err error)

// errNoDocker is what a containerStarter returns when there is no engine to
// start containers in.
var errNoDocker = errors.New("no Docker engine")

// serviceDialTimeout bounds the check whether a default service answers.
const serviceDialTimeout = time.Second

// containerStopTimeout bounds the removal of the demo's containers.
const containerStopTimeout = time.Minute

// linesError is an error report prints as its lines, not folded into one:
// advice to a person. Its lines carry no URL from the user.
type linesError struct{ lines []string }

func (e *linesError) Error() string {
	s := ""
	for i, l := range e.lines {
		if i > 0 {
			s += "\n"
		}
		s += l
	}
	return s
}

// demoServices makes sure the demo has a Postgres and (unless in no-cache
// mode) a Redis: it returns the function that removes what it started (nil
// when it started nothing). Services named by a flag or an environment
// variable are the user's choice and are never replaced.
func demoServices(ctx context.Context, e *env) (stop func(context.Context) error, err error) {
	pgDefault := !e.global.databaseURL.set && e.getenv("DATABASE_URL") == ""
	_, redisEnvSet := e.lookupEnv("REDIS_URL")
	redisDefault := e.noCache() == "" && !e.global.redisURL.set && !redisEnvSet
	needPG := pgDefault && !answers(ctx, postgresAddr(e.databaseURL()))
	needRedis := redisDefault && !answers(ctx, redisAddr(e.redisURL()))
	if !needPG && !needRedis {
		return nil, nil
	}
	missing := missingText(needPG, needRedis, e)
	start := e.containers
	if start == nil {
		start = startContainers
	}
	// Said once the starter reports its first step: with no Docker engine
	// the advice below is all the user reads.
	progress := &headedWriter{w: e.stderr, head: "ghlcache demo: nothing answers at " + missing +
		"; starting it in Docker (testcontainers-go), removed when the demo ends\n"}
	dbURL, redisURL, stop, err := start(ctx, needPG, needRedis, progress)
	if errors.Is(err, errNoDocker) {
		return nil, &linesError{lines: []string{
			"ghlcache demo: nothing answers at " + missing + ", and no Docker engine runs here to start it in.",
			"Start Postgres and Redis (Debian/Ubuntu: sudo apt install postgresql redis-server) or Docker, then rerun; or point --database-url and --redis-url at yours.",
		}}
	}
	if err != nil {
		return nil, fmt.Errorf("demo: start containers: %w", err)
	}
	// The rest of the run uses the containers, as if given by flags.
	if needPG {
		_ = e.global.databaseURL.Set(dbURL)
	}
	if needRedis {
		_ = e.global.redisURL.Set(redisURL)
	}
	return stop, nil
}

// headedWriter writes head before the first write to w.
type headedWriter struct {
	w    io.Writer
	head string
	done bool
}

func (h *headedWriter) Write(p []byte) (int, error) {
	if !h.done {
		h.done = true
		if _, err := io.WriteString(h.w, h.head); err != nil {
			return 0, err
		}
	}
	return h.w.Write(p)
}

// missingText names the default services that did not answer.
func missingText(pg, rds bool, e *env) string {
	switch {
	case pg && rds:
		return postgresAddr(e.databaseURL()) + " (Postgres) and " + redisAddr(e.redisURL()) + " (Redis)"
	case pg:
		return postgresAddr(e.databaseURL()) + " (Postgres)"
	default:
		return redisAddr(e.redisURL()) + " (Redis)"
	}
}

// answers reports whether something accepts a TCP connection at addr.
func answers(ctx context.Context, addr string) bool {
	if addr == "" {
		return false
	}
	d := net.Dialer{Timeout: serviceDialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// postgresAddr is the host:port of a Postgres URL ("" if it has none).
func postgresAddr(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() == "" {
		return ""
	}
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// redisAddr is the address of a Redis URL ("" if it does not parse).
func redisAddr(raw string) string {
	o, err := redis.ParseURL(raw)
	if err != nil {
		return ""
	}
	return o.Addr
}
