package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
)

// The one consistency checker of the demo and the bench, in three parts:
// Freshness counts stale reads while a workload runs; Drain waits until
// every invalidation has reached Redis; Compare then holds every key's
// cached copies against Postgres.

// Freshness counts stale reads during a workload: a read that began after
// a write of its key had completed and returned an older version. Keys are
// indexes in [0, n). It is safe for concurrent use.
type Freshness struct {
	written []atomic.Int64 // per key, the highest version a completed write returned
	stale   atomic.Int64
}

// NewFreshness returns a Freshness over n keys.
func NewFreshness(n int) *Freshness { return &Freshness{written: make([]atomic.Int64, n)} }

// Wrote records that a write of key i completed with version v.
func (f *Freshness) Wrote(i int, v int64) { raise(&f.written[i], v) }

// raise sets a to v if v is greater, atomically.
func raise(a *atomic.Int64, v int64) {
	for old := a.Load(); v > old && !a.CompareAndSwap(old, v); old = a.Load() {
	}
}

// Begin returns what a read of key i that starts now must see at least;
// pass it to Read with the version the read returned.
func (f *Freshness) Begin(i int) int64 { return f.written[i].Load() }

// Read records a read of a key that returned version v, against the floor
// Begin gave when it started, and reports whether it was stale.
func (f *Freshness) Read(floor, v int64) bool {
	if v < floor {
		f.stale.Add(1)
		return true
	}
	return false
}

// Stale returns the stale reads counted so far.
func (f *Freshness) Stale() int64 { return f.stale.Load() }

// ErrRedisUnreachable is Drain's verdict when Redis does not answer: the
// invalidations wait in the outbox, and nothing can be compared.
var ErrRedisUnreachable = errors.New("could not verify the cache (Redis unreachable)")

// Outbox is one cached repository's invalidation outbox, as Drain drives
// it.
type Outbox struct {
	Sweep func(ctx context.Context) error          // delivers what it can
	Depth func(ctx context.Context) (int64, error) // rows left
}

// Drainer waits until outboxes are empty.
type Drainer struct {
	Outboxes []Outbox
	Timeout  time.Duration // bound on the whole wait; 0: ctx's only
	// Healthy, if set, reports whether Redis answers. Drain gives up with
	// ErrRedisUnreachable once every sweep for UnreachableGrace failed for
	// want of Redis and Healthy reports false. Without it, Drain waits out
	// Timeout.
	Healthy          func(ctx context.Context) bool
	UnreachableGrace time.Duration
	Poll             time.Duration // between sweeps; 0: 20 ms
}

// Drain sweeps every outbox until none holds a row, and returns the depth
// it saw last. While Redis fails (or the breaker is open) a sweep fails
// with cachelayer.ErrUnavailable; Drain keeps trying (the breaker's
// half-open probe is one of these calls). It returns ErrRedisUnreachable
// (see Healthy), or an error at Timeout or when ctx ends.
func (d Drainer) Drain(ctx context.Context) (int64, error) {
	qctx, cancel := context.WithCancel(ctx)
	if d.Timeout > 0 {
		qctx, cancel = context.WithTimeout(ctx, d.Timeout)
	}
	defer cancel()
	poll := d.Poll
	if poll <= 0 {
		poll = 20 * time.Millisecond
	}
	var depth int64
	var failingSince time.Time // zero: the last sweep reached Redis
	for {
		var sweepErrs, depthErrs []error
		for _, o := range d.Outboxes {
			sweepErrs = append(sweepErrs, o.Sweep(qctx))
		}
		err := errors.Join(sweepErrs...)
		unavailable := errors.Is(err, cachelayer.ErrUnavailable)
		if err != nil && !unavailable && qctx.Err() == nil {
			return depth, err
		}
		var n int64
		for _, o := range d.Outboxes {
			k, err := o.Depth(qctx)
			n += k
			depthErrs = append(depthErrs, err)
		}
		switch err := errors.Join(depthErrs...); {
		case err != nil && qctx.Err() == nil:
			return depth, err
		case err == nil:
			if depth = n; depth == 0 {
				return 0, nil
			}
		}
		switch {
		case !unavailable:
			failingSince = time.Time{}
		case failingSince.IsZero():
			failingSince = time.Now()
		case d.Healthy != nil && time.Since(failingSince) >= d.UnreachableGrace && !d.Healthy(qctx):
			return depth, ErrRedisUnreachable
		}
		select {
		case <-qctx.Done():
			if ctx.Err() == nil && unavailable {
				return depth, ErrRedisUnreachable
			}
			if d.Timeout > 0 && ctx.Err() == nil {
				return depth, fmt.Errorf("the outbox still holds %d invalidation(s) after %s: %w", depth, d.Timeout, qctx.Err())
			}
			return depth, fmt.Errorf("the outbox still holds %d invalidation(s): %w", depth, qctx.Err())
		case <-time.After(poll): // bounded by qctx
		}
	}
}

// Check compares the cached copies of key i with the truth: it returns
// how many copies it found and a description of each that differs.
type Check func(ctx context.Context, i int) (cached int, diffs []string, err error)

// Comparison is what Compare found.
type Comparison struct {
	Keys       int      // keys checked
	Cached     int      // cached copies found
	StaleKeys  int      // keys with at least one copy that differs
	Mismatches int      // copies that differ
	Examples   []string // the first MaxExamples of them
}

// MaxExamples is how many mismatches a Comparison describes.
const MaxExamples = 5

// Add adds o's counts and examples to c.
func (c *Comparison) Add(o Comparison) {
	c.Keys += o.Keys
	c.Cached += o.Cached
	c.StaleKeys += o.StaleKeys
	c.Mismatches += o.Mismatches
	for _, ex := range o.Examples {
		if len(c.Examples) < MaxExamples {
			c.Examples = append(c.Examples, ex)
		}
	}
}

// Compare runs check on every key in [0, n), eight at a time, once the
// caches are quiet (see Drain). An error stops it; when several checks
// failed and one failed for want of Redis (cachelayer.ErrUnavailable), that
// one is returned, the likely cause of the others.
func Compare(ctx context.Context, n int, check Check) (Comparison, error) {
	var mu sync.Mutex
	var c Comparison
	err := ForEach(ctx, n, 8, func(err error) bool { return errors.Is(err, cachelayer.ErrUnavailable) },
		func(ctx context.Context, i int) error {
			cached, diffs, err := check(ctx, i)
			if err != nil {
				return err
			}
			one := Comparison{Keys: 1, Cached: cached, Mismatches: len(diffs), Examples: diffs}
			if len(diffs) > 0 {
				one.StaleKeys = 1
			}
			mu.Lock()
			c.Add(one)
			mu.Unlock()
			return nil
		})
	return c, err
}
