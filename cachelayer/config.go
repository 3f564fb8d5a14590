package cachelayer

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// TTLs for common kinds of data, as in the service this package replaces.
const (
	TTLShort  = 60 * time.Second // fast-changing data, e.g. credit balances
	TTLMedium = 5 * time.Minute  // e.g. workflow definitions
	TTLLong   = time.Hour
	TTLDay    = 24 * time.Hour
)

// NoExpiry is what [Cache.TTL] returns for a key that exists without an
// expiry (Redis PTTL -1), which entries written by this package never are.
const NoExpiry time.Duration = -1

// MaxKeyLen is the longest key (without the prefix) the cache accepts.
const MaxKeyLen = 1024

// Errors. Every error this package returns that stems from one of these
// wraps it, so callers test with [errors.Is].
var (
	// ErrUnavailable is returned by calls that cannot fall back to a
	// loader when Redis failed, the circuit breaker is open, or the cache
	// is in no-cache mode (see the package documentation, call by call).
	ErrUnavailable = errors.New("cachelayer: cache unavailable")
	// ErrNotFound marks "does not exist": loaders return an error that Is
	// it to have the absence cached (negative caching); Fetch and Get
	// return it for a cached not-found marker; TTL returns it for a key
	// that holds no value.
	ErrNotFound = errors.New("cachelayer: not found")
	// ErrInvalid is returned for an empty or over-long key, a ttl <= 0 and
	// other bad arguments; nothing is written.
	ErrInvalid = errors.New("cachelayer: invalid argument")
	// ErrLoaderPanic is what the callers of a load get when the loader
	// panicked (as a [*PanicError]); the process does not crash and
	// nothing is cached.
	ErrLoaderPanic = errors.New("cachelayer: loader panicked")
)

// PanicError is the error Fetch returns to every caller of a load whose
// loader panicked. It Is [ErrLoaderPanic].
type PanicError struct {
	Value any    // what the loader panicked with
	Stack []byte // the loader's goroutine stack at the panic
}

// Error implements error. It names the panic value, not the stack.
func (e *PanicError) Error() string { return fmt.Sprintf("cachelayer: loader panicked: %v", e.Value) }

// Is reports whether target is ErrLoaderPanic.
func (e *PanicError) Is(target error) bool { return target == ErrLoaderPanic }

// Config tunes a [Cache]. The zero value of every field means its default;
// a negative duration is a programming error and makes New and Open panic.
type Config struct {
	// Prefix namespaces every key the cache stores; default "ghl:".
	Prefix string
	// OpTimeout bounds each Redis call on the read path (and Set, Exists,
	// TTL, Incr, Allow); default 100 ms.
	OpTimeout time.Duration
	// InvalidateTimeout bounds each Delete (and each round trip of
	// DeletePrefix), so that a slow Redis still gets the delete after a
	// write; default 1 s.
	InvalidateTimeout time.Duration
	// LoadTimeout bounds the detached, shared call of a loader; default 5 s.
	LoadTimeout time.Duration
	// LeaseTTL is how long a lease (the placeholder a loading process puts
	// in the key) lives if its holder never fills it; default 3 s.
	LeaseTTL time.Duration
	// LeaseWait is how long a process that finds another's lease waits
	// for its fill before loading without filling; default 1 s.
	LeaseWait time.Duration
	// NegativeTTL is how long a not-found marker lives; default 30 s.
	NegativeTTL time.Duration
	// Jitter is the largest fraction shaved off each fill's TTL at random,
	// so keys filled together do not expire together; default 0.1. It must
	// be below 1; a negative value disables jitter.
	Jitter float64
	// BreakerFailures is the number of consecutive Redis failures that
	// open the circuit breaker; default 5.
	BreakerFailures int
	// BreakerCooldown is how long the breaker stays open before one
	// half-open probe; default 1 s.
	BreakerCooldown time.Duration
	// MaxValueBytes is the largest encoded entry the cache stores; larger
	// values are served but not cached. Default 256 KiB.
	MaxValueBytes int
	// Codec encodes values; default JSON.
	Codec Codec
	// InvalidateReplicas is how many replicas must confirm each delete
	// (Redis WAIT, sent in the delete's own pipeline: no extra round trip)
	// before Delete, DeleteFull and DeleteFullEach report the key deleted;
	// at most the replicas the key's master has, and no WAIT for a master
	// without replicas. 0 means 1 (when the master has replicas); negative
	// means never wait. A key deleted on its master but not confirmed in
	// time gets an error that Is [ErrNotReplicated]: its invalidation is
	// kept for a retry, so a failover to a lagging replica cannot bring the
	// old value back for good.
	InvalidateReplicas int
	// InvalidateWaitTimeout bounds each delete's WAIT for its replicas, at
	// most half of InvalidateTimeout; default 100 ms.
	InvalidateWaitTimeout time.Duration
	// TopologyInterval is how often, at most, the cache looks at its
	// Redis's topology (one CLUSTER NODES, or one INFO, when a delete or
	// TopologyEpoch finds the last look older): the masters' replicas and
	// the changes that advance TopologyEpoch. Failures and breakers closing
	// trigger a look sooner. Default 1 s: with the outbox asking every 250 ms,
	// a promoted standalone replica is seen within about a second (one INFO
	// per second per Cache while the outbox runs).
	TopologyInterval time.Duration
	// ReadsInFlight is how many Fetch reads (SET key <lease> NX GET, each
	// a command of its own or a pipeline of several) may be on their way to
	// Redis at once. A read that arrives while that many are in flight waits
	// until one returns and is then sent with every other read that waited,
	// in one pipeline: one socket write and read for all of them, and one
	// command for reads of the same key. A read is never joined to a command
	// already sent (its reply could predate the read), and its wait counts
	// against its OpTimeout. Default max(2, GOMAXPROCS); negative sends every
	// read on its own at once (the go-redis pool then queues them).
	ReadsInFlight int
	// Near configures the near tier, an in-process copy of the values of
	// some keys in front of Redis; off unless Near.Prefix names one (or
	// [Cache.EnableNear] adds one). See [NearConfig].
	Near NearConfig
	// MeterProvider, if set, receives the cache's metrics (request
	// outcomes, Fetch and load latency, loads, invalidations, breakers; see
	// the names in the package documentation). TracerProvider, if set, gets
	// a span for each Fetch that misses (hits have none) and one for each
	// load. Both nil (the default): no telemetry, and it costs nothing. The
	// cache uses the OpenTelemetry API only; the SDK is the service's.
	MeterProvider  metric.MeterProvider
	TracerProvider trace.TracerProvider
	// Logger receives warnings on state changes (breaker open and closed,
	// a client without ContextTimeoutEnabled), never one per request;
	// default slog.Default().
	Logger *slog.Logger
}

// Defaults.
const (
	defaultPrefix            = "ghl:"
	defaultOpTimeout         = 100 * time.Millisecond
	defaultInvalidateTimeout = time.Second
	defaultLoadTimeout       = 5 * time.Second
	defaultLeaseTTL          = 3 * time.Second
	defaultLeaseWait         = time.Second
	defaultNegativeTTL       = 30 * time.Second
	defaultJitter            = 0.1
	defaultBreakerFailures   = 5
	defaultBreakerCooldown   = time.Second
	defaultMaxValueBytes     = 256 << 10
	defaultInvalidateWait    = 100 * time.Millisecond
	defaultTopologyInterval  = time.Second
)

// withDefaults validates cfg (panicking on negative durations and other
// impossible values) and returns a copy with every zero field defaulted.
func withDefaults(cfg *Config) Config {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	for name, d := range map[string]time.Duration{
		"OpTimeout": c.OpTimeout, "InvalidateTimeout": c.InvalidateTimeout,
		"LoadTimeout": c.LoadTimeout, "LeaseTTL": c.LeaseTTL, "LeaseWait": c.LeaseWait,
		"NegativeTTL": c.NegativeTTL, "BreakerCooldown": c.BreakerCooldown,
		"InvalidateWaitTimeout": c.InvalidateWaitTimeout, "TopologyInterval": c.TopologyInterval,
		"Near.MaxStaleness": c.Near.MaxStaleness, "Near.Keepalive": c.Near.Keepalive, "Near.MaxLag": c.Near.MaxLag,
	} {
		if d < 0 {
			panic(fmt.Sprintf("cachelayer: Config.%s is negative (%v)", name, d))
		}
	}
	if c.ReadsInFlight == 0 {
		c.ReadsInFlight = max(2, runtime.GOMAXPROCS(0))
	}
	if c.Near.MaxEntries < 0 || c.Near.MaxBytes < 0 {
		panic("cachelayer: Config.Near.MaxEntries and Config.Near.MaxBytes must not be negative")
	}
	c.Near.MaxEntries = cmp.Or(c.Near.MaxEntries, defaultNearEntries)
	c.Near.MaxBytes = cmp.Or(c.Near.MaxBytes, defaultNearBytes)
	c.Near.MaxStaleness = cmp.Or(c.Near.MaxStaleness, defaultNearStaleness)
	c.Near.Keepalive = cmp.Or(c.Near.Keepalive, defaultNearKeepalive)
	c.Near.MaxLag = cmp.Or(c.Near.MaxLag, defaultNearMaxLag)
	if c.BreakerFailures < 0 || c.MaxValueBytes < 0 {
		panic("cachelayer: Config.BreakerFailures and Config.MaxValueBytes must not be negative")
	}
	if c.Jitter >= 1 {
		panic(fmt.Sprintf("cachelayer: Config.Jitter %v must be below 1", c.Jitter))
	}
	c.Prefix = cmp.Or(c.Prefix, defaultPrefix)
	c.OpTimeout = cmp.Or(c.OpTimeout, defaultOpTimeout)
	c.InvalidateTimeout = cmp.Or(c.InvalidateTimeout, defaultInvalidateTimeout)
	c.LoadTimeout = cmp.Or(c.LoadTimeout, defaultLoadTimeout)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, defaultLeaseTTL)
	c.LeaseWait = cmp.Or(c.LeaseWait, defaultLeaseWait)
	c.NegativeTTL = cmp.Or(c.NegativeTTL, defaultNegativeTTL)
	c.Jitter = cmp.Or(c.Jitter, defaultJitter)
	if c.Jitter < 0 {
		c.Jitter = 0
	}
	c.BreakerFailures = cmp.Or(c.BreakerFailures, defaultBreakerFailures)
	c.BreakerCooldown = cmp.Or(c.BreakerCooldown, defaultBreakerCooldown)
	c.MaxValueBytes = cmp.Or(c.MaxValueBytes, defaultMaxValueBytes)
	c.InvalidateWaitTimeout = cmp.Or(c.InvalidateWaitTimeout, defaultInvalidateWait)
	c.TopologyInterval = cmp.Or(c.TopologyInterval, defaultTopologyInterval)
	if c.Codec == nil {
		c.Codec = JSON{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
