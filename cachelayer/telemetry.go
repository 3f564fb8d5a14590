package cachelayer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry through the OpenTelemetry API. The cache depends on the API
// only: a service passes the MeterProvider and TracerProvider of its SDK in
// Config, and with neither set the cache has no telemetry at all (c.tel is
// nil, and each place that would record tests that one pointer).
//
// Metrics (names under "ghlcache.", attributes ghlcache.domain and
// ghlcache.outcome only: never a key or a user id):
//
//	ghlcache.cache.requests           counter   {request}  Fetch calls, by domain and outcome
//	ghlcache.cache.fetch.duration     histogram s          Fetch latency, by domain and outcome (near hits are not timed)
//	ghlcache.cache.loads              counter   {load}     loader calls, by domain
//	ghlcache.cache.loads.shared       counter   {request}  Fetch calls answered by another caller's load
//	ghlcache.cache.load.duration      histogram s          loader latency, by domain and outcome (ok, error)
//	ghlcache.cache.lease_waits        counter   {wait}     flights that waited for another process's lease
//	ghlcache.cache.fills.rejected     counter   {fill}     fills refused because an invalidation voided their lease
//	ghlcache.cache.corrupt            counter   {entry}    undecodable entries replaced
//	ghlcache.cache.invalidations      counter   {key}      keys whose delete Redis acknowledged
//	ghlcache.cache.invalidation.failures counter {key}     keys whose delete did not reach Redis
//	ghlcache.cache.redis.errors       counter   {error}    Redis calls that failed for want of Redis (observed)
//	ghlcache.cache.breakers.open      gauge     {breaker}  open (or half-open) breakers: 0 or 1, on a Cluster up to one per master
//	ghlcache.cache.near.entries       gauge     {entry}    values held by the near tier
//
// Outcomes of a Fetch: hit (a value in Redis), near_hit (a value or
// not-found marker in the near tier), not_found (a not-found marker in
// Redis), miss (nothing usable in Redis: the call waited for a load),
// fallback (Redis failed or its breaker was open: served by the loader),
// bypass (no-cache mode or FetchOptions.SkipRedis) and error (the call
// ended before its read, as on a cancelled context). The first read of a
// call decides its outcome, except that a call its flight served from the
// loader because Redis failed is a fallback, as in Stats.
//
// Traces: a Fetch answered by its own read (a hit) has no span. A Fetch
// that misses gets a span "ghlcache.Fetch" starting when the call began,
// with the outcome and whether the load was shared; the flight it leads
// adds events (lease.wait, fill, fill.rejected, corrupt) and every load
// runs in a child span "ghlcache.load", whose context the loader gets (so
// a pgx tracer's query spans nest under it).
type telemetry struct {
	tracer trace.Tracer // nil without a TracerProvider

	loads, loadsShared, leaseWaits      metric.Int64Counter
	fillsRejected, corrupt              metric.Int64Counter
	invalidations, invalidationFailures metric.Int64Counter
	fetchDuration, loadDuration         metric.Float64Histogram
	reg                                 metric.Registration
	domains                             atomic.Pointer[[]*domainAttrs]
	other                               *domainAttrs
	mu                                  sync.Mutex // serializes SetDomain
	metricsOn                           bool
}

// outcome is what a Fetch call's read found (see telemetry).
type outcome uint8

const (
	outError outcome = iota
	outHit
	outNearHit
	outNotFound
	outMiss
	outFallback
	outBypass
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"error", "hit", "near_hit", "not_found", "miss", "fallback", "bypass"}

func (o outcome) String() string { return outcomeNames[o] }

// Attribute keys.
const (
	attrDomain  = attribute.Key("ghlcache.domain")
	attrOutcome = attribute.Key("ghlcache.outcome")
	attrShared  = attribute.Key("ghlcache.shared")
)

// domainAttrs are one domain's request counts and measurement options,
// the options built once as slices so that recording allocates nothing (a
// variadic option passed anew would be one allocation per call).
type domainAttrs struct {
	prefix string                    // key prefix (without the cache's Prefix); "" for "other"
	reqs   [numOutcomes]atomic.Int64 // requests by outcome, observed at each collection
	plain  []metric.AddOption
	byOut  [numOutcomes]metric.MeasurementOption // for the requests' observation
	recOut [numOutcomes][]metric.RecordOption
	loadOK []metric.RecordOption
	loadEr []metric.RecordOption
	span   attribute.KeyValue
}

func newDomainAttrs(prefix, name string) *domainAttrs {
	d := &domainAttrs{prefix: prefix, span: attrDomain.String(name)}
	d.plain = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrDomain.String(name)))}
	for o := range numOutcomes {
		d.byOut[o] = metric.WithAttributeSet(attribute.NewSet(attrDomain.String(name), attrOutcome.String(o.String())))
		d.recOut[o] = []metric.RecordOption{d.byOut[o]}
	}
	d.loadOK = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attrDomain.String(name), attrOutcome.String("ok")))}
	d.loadEr = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attrDomain.String(name), attrOutcome.String("error")))}
	return d
}

// each calls fn for every domain, "other" last.
func (t *telemetry) each(fn func(*domainAttrs)) {
	for _, d := range *t.domains.Load() {
		fn(d)
	}
	fn(t.other)
}

// Buckets of the latency histograms, in seconds: from 50 µs (a near hit,
// a loopback GET) to 5 s (LoadTimeout).
var latencyBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
}

const instrumentationName = "github.com/ghl-agency/ghlcache/cachelayer"

// newTelemetry returns the cache's telemetry, or nil when cfg sets neither
// provider. Instruments that fail to register (an SDK's error) are
// replaced by no-ops and the error logged: telemetry never fails the cache.
func newTelemetry(c *Cache, cfg *Config) *telemetry {
	if cfg.MeterProvider == nil && cfg.TracerProvider == nil {
		return nil
	}
	t := &telemetry{other: newDomainAttrs("", "other")}
	t.domains.Store(&[]*domainAttrs{})
	if cfg.TracerProvider != nil {
		t.tracer = cfg.TracerProvider.Tracer(instrumentationName)
	}
	if cfg.MeterProvider == nil {
		return t
	}
	m := cfg.MeterProvider.Meter(instrumentationName)
	t.metricsOn = true
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		ctr, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return ctr
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(latencyBuckets...))
		errs = append(errs, err)
		return h
	}
	t.loads = counter("ghlcache.cache.loads", "{load}", "Loader calls, including reloads after a rejected fill")
	t.loadsShared = counter("ghlcache.cache.loads.shared", "{request}", "Fetch calls answered by a load another caller started")
	t.leaseWaits = counter("ghlcache.cache.lease_waits", "{wait}", "Flights that waited for another process's lease")
	t.fillsRejected = counter("ghlcache.cache.fills.rejected", "{fill}", "Fills refused because an invalidation voided their lease")
	t.corrupt = counter("ghlcache.cache.corrupt", "{entry}", "Undecodable entries replaced")
	t.invalidations = counter("ghlcache.cache.invalidations", "{key}", "Keys whose delete Redis acknowledged")
	t.invalidationFailures = counter("ghlcache.cache.invalidation.failures", "{key}", "Keys whose delete did not reach Redis")
	t.fetchDuration = histogram("ghlcache.cache.fetch.duration", "Fetch latency, by outcome")
	t.loadDuration = histogram("ghlcache.cache.load.duration", "Loader latency")

	// Requests are counted with an atomic add per call (a near hit costs
	// about 100 ns: a synchronous counter would cost more than the hit)
	// and observed at each collection.
	requests, err := m.Int64ObservableCounter("ghlcache.cache.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Fetch calls, by outcome"))
	errs = append(errs, err)
	redisErrors, err := m.Int64ObservableCounter("ghlcache.cache.redis.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Redis calls that failed for want of Redis"))
	errs = append(errs, err)
	breakers, err := m.Int64ObservableGauge("ghlcache.cache.breakers.open", metric.WithUnit("{breaker}"),
		metric.WithDescription("Open or half-open circuit breakers (one per master on a Cluster)"))
	errs = append(errs, err)
	nearEntries, err := m.Int64ObservableGauge("ghlcache.cache.near.entries", metric.WithUnit("{entry}"),
		metric.WithDescription("Values held by the near tier"))
	errs = append(errs, err)
	t.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		t.each(func(d *domainAttrs) {
			for out := range numOutcomes {
				if n := d.reqs[out].Load(); n != 0 {
					o.ObserveInt64(requests, n, d.byOut[out])
				}
			}
		})
		o.ObserveInt64(redisErrors, c.st.redisErrors.Load())
		open := int64(c.shardsOpen())
		if c.shards == nil && c.rdb != nil && c.anyBreakerOpen() {
			open = 1
		}
		o.ObserveInt64(breakers, open)
		var entries int64
		if n := c.near.Load(); n != nil {
			entries = int64(n.store.EstimatedSize())
		}
		o.ObserveInt64(nearEntries, entries)
		return nil
	}, requests, redisErrors, breakers, nearEntries)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		c.log.Warn("cachelayer: some metrics are not recorded", "err", err)
	}
	return t
}

// close unregisters the gauges' callback.
func (t *telemetry) close() {
	if t != nil && t.reg != nil {
		_ = t.reg.Unregister()
	}
}

// MeterProvider returns Config.MeterProvider (nil if none), so that the
// repositories built on the cache report their own gauges (the outbox's)
// through the same provider.
func (c *Cache) MeterProvider() metric.MeterProvider { return c.cfg.MeterProvider }

// Client returns the Redis client the cache uses (nil in no-cache mode),
// for hooks such as redisotel's: go-redis lets hooks be added while the
// client is in use. The near tier's tracking connections are its own and
// are not this client's. Close the Cache, not the client.
func (c *Cache) Client() redis.UniversalClient { return c.rdb }

// SetDomain names, for metrics and spans, the domain of the keys that start
// with keyPrefix (without Config.Prefix): their measurements carry
// ghlcache.domain=name, those of other keys "other". The repositories of
// this module name theirs ("credits", "workflows"). A key under several
// prefixes belongs to the longest; the first name given to a prefix stays.
// Name few domains: each is a label value. It costs nothing without
// telemetry.
func (c *Cache) SetDomain(keyPrefix, name string) {
	t := c.tel
	if t == nil || keyPrefix == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.domains.Load()
	for _, d := range old {
		if d.prefix == keyPrefix {
			return
		}
	}
	next := append(append(make([]*domainAttrs, 0, len(old)+1), old...), newDomainAttrs(keyPrefix, name))
	t.domains.Store(&next)
}

// domain returns the measurement options of key (without Config.Prefix).
func (t *telemetry) domain(key string) *domainAttrs {
	best := t.other
	for _, d := range *t.domains.Load() {
		if strings.HasPrefix(key, d.prefix) && len(d.prefix) > len(best.prefix) {
			best = d
		}
	}
	return best
}

// telDomain is domain for a full key (with Config.Prefix).
func (c *Cache) telDomain(full string) *domainAttrs {
	return c.tel.domain(strings.TrimPrefix(full, c.prefix))
}

// fetchObs is what a Fetch call's telemetry gathers while it runs.
type fetchObs struct {
	t0     time.Time
	out    outcome
	set    bool       // out is decided
	shared bool       // answered by another caller's load
	span   trace.Span // nil unless the call missed and traces are on
}

// decide sets the call's outcome unless its first read already did.
func (o *fetchObs) decide(out outcome) {
	if o != nil && !o.set {
		o.out, o.set = out, true
	}
}

// startSpan starts the call's span (backdated to its beginning) once it
// is known not to be a hit, and returns ctx with it.
func (c *Cache) startSpan(ctx context.Context, ob *fetchObs, key string) context.Context {
	if ob == nil || ob.span != nil || c.tel.tracer == nil {
		return ctx
	}
	ctx, ob.span = c.tel.tracer.Start(ctx, "ghlcache.Fetch", trace.WithTimestamp(ob.t0),
		trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(c.tel.domain(key).span))
	return ctx
}

// nearHit records a Fetch answered by the near tier: counted, not timed
// (a clock read and a histogram sample would cost more than the hit).
func (c *Cache) nearHit(key string) {
	c.tel.domain(key).reqs[outNearHit].Add(1)
}

// fetched records a finished Fetch call (not a near hit).
func (c *Cache) fetched(key string, ob *fetchObs, err error) {
	t := c.tel
	d := t.domain(key)
	d.reqs[ob.out].Add(1)
	if t.metricsOn {
		t.fetchDuration.Record(context.Background(), time.Since(ob.t0).Seconds(), d.recOut[ob.out]...)
	}
	if s := ob.span; s != nil {
		s.SetAttributes(attrOutcome.String(ob.out.String()), attrShared.Bool(ob.shared))
		if err != nil && !errors.Is(err, ErrNotFound) {
			s.RecordError(err)
			s.SetStatus(codes.Error, "fetch failed")
		}
		s.End()
	}
}

// count adds one to ctr for the domain of full, if metrics are on.
func (c *Cache) count(ctr func(*telemetry) metric.Int64Counter, full string, n int64) {
	if t := c.tel; t != nil && t.metricsOn && n > 0 {
		ctr(t).Add(context.Background(), n, c.telDomain(full).plain...)
	}
}

func telLoadsShared(t *telemetry) metric.Int64Counter          { return t.loadsShared }
func telLeaseWaits(t *telemetry) metric.Int64Counter           { return t.leaseWaits }
func telFillsRejected(t *telemetry) metric.Int64Counter        { return t.fillsRejected }
func telCorrupt(t *telemetry) metric.Int64Counter              { return t.corrupt }
func telInvalidations(t *telemetry) metric.Int64Counter        { return t.invalidations }
func telInvalidationFailures(t *telemetry) metric.Int64Counter { return t.invalidationFailures }

// spanEvent adds an event to the span of the flight's leader, if any.
func spanEvent(s trace.Span, name string) {
	if s != nil {
		s.AddEvent(name)
	}
}

// loadSpan starts a load's span and its clock; end records both.
func (c *Cache) loadSpan(ctx context.Context) (context.Context, time.Time, trace.Span) {
	var s trace.Span
	if c.tel.tracer != nil {
		ctx, s = c.tel.tracer.Start(ctx, "ghlcache.load", trace.WithSpanKind(trace.SpanKindInternal))
	}
	return ctx, time.Now(), s
}

func (c *Cache) loadEnd(full string, t0 time.Time, s trace.Span, err error) {
	t := c.tel
	failed := err != nil && !errors.Is(err, ErrNotFound)
	if t.metricsOn {
		d := c.telDomain(full)
		ctx := context.Background()
		t.loads.Add(ctx, 1, d.plain...)
		opt := d.loadOK
		if failed {
			opt = d.loadEr
		}
		t.loadDuration.Record(ctx, time.Since(t0).Seconds(), opt...)
	}
	if s != nil {
		s.SetAttributes(c.telDomain(full).span)
		if failed {
			s.RecordError(err)
			s.SetStatus(codes.Error, "load failed")
		}
		s.End()
	}
}
