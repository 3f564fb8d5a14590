package main

import (
	"cmp"
	"flag"
)

// Defaults of the global settings, for a Postgres and a Redis on this machine.
const (
	defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	defaultRedisURL    = "redis://127.0.0.1:6379/0"
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
		"Redis `URL` (env REDIS_URL, default "+defaultRedisURL+")")
	fs.BoolVar(&g.noCache, "no-cache", g.noCache,
		"run without Redis (no-cache mode)")
}

// databaseURL returns the Postgres URL to use: flag, env, default.
func (e *env) databaseURL() string {
	return cmp.Or(e.global.databaseURL.value, e.getenv("DATABASE_URL"), defaultDatabaseURL)
}

// redisURL returns the Redis URL to use: flag, env, default.
func (e *env) redisURL() string {
	return cmp.Or(e.global.redisURL.value, e.getenv("REDIS_URL"), defaultRedisURL)
}

// urlFlag is a flag.Value holding a URL that may carry a password; it shows
// itself redacted, so neither usage text nor a flag error can leak it.
type urlFlag struct{ value string }

func (f *urlFlag) Set(s string) error { f.value = s; return nil }

func (f *urlFlag) String() string {
	if f == nil {
		return ""
	}
	return redactURL(f.value)
}
