package main

import (
	"cmp"
	"flag"

	"github.com/ghl-agency/ghlcache/internal/localservices"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

// Defaults of the global settings, for a Postgres and a Redis on this machine.
const (
	defaultDatabaseURL = localservices.DatabaseURL
	defaultRedisURL    = localservices.RedisURL
)

// globalFlags are the settings every command accepts, before or after its
// name. A flag overrides the environment variable, which overrides the
// default.
type globalFlags struct {
	databaseURL urlFlag // --database-url, env DATABASE_URL
	redisURL    urlFlag // --redis-url, env REDIS_URL
	noCache     bool    // --no-cache: do not use Redis at all
}

// register defines the global flags on fs. The same variables back every
// command's flag set, so a value given before the command survives.
func (g *globalFlags) register(fs *flag.FlagSet) {
	fs.Var(&g.databaseURL, "database-url",
		"Postgres `URL` (env DATABASE_URL, default "+defaultDatabaseURL+")")
	fs.Var(&g.redisURL, "redis-url",
		"Redis `URL` (env REDIS_URL, default "+defaultRedisURL+"; empty: no-cache mode)")
	fs.BoolVar(&g.noCache, "no-cache", g.noCache,
		"run without Redis (no-cache mode)")
}

// databaseURL returns the Postgres URL to use: flag, env, default.
func (e *env) databaseURL() string {
	return cmp.Or(e.global.databaseURL.value, e.getenv("DATABASE_URL"), e.defaults.databaseURL, defaultDatabaseURL)
}

// getenv returns the environment variable name, "" if unset.
func (e *env) getenv(name string) string {
	v, _ := e.lookupEnv(name)
	return v
}

// redisURL returns the Redis URL to use: flag, env, default; "" when Redis
// is not to be used (see noCache).
func (e *env) redisURL() string {
	if e.global.noCache {
		return ""
	}
	if e.global.redisURL.set {
		return e.global.redisURL.value
	}
	if v, ok := e.lookupEnv("REDIS_URL"); ok {
		return v
	}
	return cmp.Or(e.defaults.redisURL, defaultRedisURL)
}

// noCache says why the command runs without Redis, "" when it uses Redis.
// As in the library, a REDIS_URL that is set but empty means no-cache mode;
// unset, it means the default server.
func (e *env) noCache() string {
	switch {
	case e.global.noCache:
		return "--no-cache"
	case e.redisURL() != "":
		return ""
	case e.global.redisURL.set:
		return "--redis-url is empty"
	default:
		return "REDIS_URL is empty"
	}
}

// urlFlag is a flag.Value holding a URL that may carry a password; it shows
// itself redacted, so neither usage text nor a flag error can leak it.
type urlFlag struct {
	value string
	set   bool // given on the command line, maybe as ""
}

func (f *urlFlag) Set(s string) error { f.value, f.set = s, true; return nil }

func (f *urlFlag) String() string {
	if f == nil {
		return ""
	}
	return redact.URL(f.value)
}
