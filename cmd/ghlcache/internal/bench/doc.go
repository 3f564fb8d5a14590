// Package bench is the measuring machinery behind the ghlcache CLI's demo
// and bench commands: Zipf key choice, latency histograms, CPU accounting,
// a pgx tracer that counts queries, the peer caches ghlcache is compared
// with, and the workloads that drive them.
//
// It lives under the CLI (cmd/ghlcache/internal), so that only the CLI can
// import it: it is the only package besides the CLI that imports the peer
// library (github.com/go-redis/cache/v9), and no library package depends
// on it.
//
// Every workload is bounded (by a duration or an operation count) and only
// talks to the Postgres and Redis it is given, which the CLI points at
// loopback services.
package bench
