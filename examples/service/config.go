package main

import (
	"cmp"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/ghl-agency/ghlcache/internal/localservices"
)

// config is the service's configuration, read from the environment by
// loadConfig.
type config struct {
	databaseURL     string        // DATABASE_URL
	redisURL        string        // REDIS_URL; "" is no-cache mode
	cachePrefix     string        // CACHE_PREFIX; "" keeps the library's "ghl:"
	addr            string        // ADDR, host:port to listen on (port 0: any free port)
	rateLimit       int64         // RATE_LIMIT, requests per user per window; 0 turns the limit off
	rateWindow      time.Duration // RATE_WINDOW
	shutdownTimeout time.Duration // SHUTDOWN_TIMEOUT, for the in-flight requests
	migrate         bool          // MIGRATE: apply the migrations at start

	hooks hooks // tests only
}

// Defaults, for a Postgres and a Redis on this machine.
const (
	defaultAddr            = "127.0.0.1:8080"
	defaultRateLimit       = 20
	defaultRateWindow      = time.Second
	defaultShutdownTimeout = 10 * time.Second
	defaultMigrate         = true
)

// loadConfig reads the configuration from the environment (lookupEnv is
// os.LookupEnv in main). As in the CLI, an unset DATABASE_URL or REDIS_URL
// means the local server, and a REDIS_URL that is set but empty means
// no-cache mode (every read goes to Postgres, the rate limit is off). An
// invalid value is an error naming the variable; URLs are checked by
// ghlcache.Open, which never echoes a password.
func loadConfig(lookupEnv func(string) (string, bool)) (config, error) {
	getenv := func(name string) string { v, _ := lookupEnv(name); return v }
	cfg := config{
		databaseURL: cmp.Or(getenv("DATABASE_URL"), localservices.DatabaseURL),
		redisURL:    localservices.RedisURL,
		cachePrefix: getenv("CACHE_PREFIX"),
		addr:        cmp.Or(getenv("ADDR"), defaultAddr),
	}
	if v, ok := lookupEnv("REDIS_URL"); ok {
		cfg.redisURL = v
	}
	if _, _, err := net.SplitHostPort(cfg.addr); err != nil {
		return config{}, fmt.Errorf("ADDR %q: want host:port", cfg.addr)
	}
	var err error
	if cfg.rateLimit, err = envInt(getenv, "RATE_LIMIT", defaultRateLimit); err != nil {
		return config{}, err
	}
	if cfg.rateWindow, err = envDuration(getenv, "RATE_WINDOW", defaultRateWindow); err != nil {
		return config{}, err
	}
	if cfg.rateWindow < time.Millisecond {
		// The counter's window is kept in whole milliseconds.
		return config{}, fmt.Errorf("RATE_WINDOW %s: want at least 1ms", cfg.rateWindow)
	}
	if cfg.shutdownTimeout, err = envDuration(getenv, "SHUTDOWN_TIMEOUT", defaultShutdownTimeout); err != nil {
		return config{}, err
	}
	if cfg.migrate, err = envBool(getenv, "MIGRATE", defaultMigrate); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// envInt parses the variable name as an int64 >= 0, def when unset or empty.
func envInt(getenv func(string) string, name string, def int64) (int64, error) {
	s := getenv(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s %q: want a whole number >= 0", name, s)
	}
	return n, nil
}

// envDuration parses the variable name as a positive duration ("1s",
// "500ms"), def when unset or empty.
func envDuration(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	s := getenv(name)
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q: want a positive duration such as 1s or 500ms", name, s)
	}
	return d, nil
}

// envBool parses the variable name as a boolean (strconv.ParseBool: 1, t,
// true, 0, f, false, …), def when unset or empty.
func envBool(getenv func(string) string, name string, def bool) (bool, error) {
	s := getenv(name)
	if s == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%s %q: want true or false", name, s)
	}
	return b, nil
}
