package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghl-agency/ghlcache/credits"
)

// ReadFunc reads one balance.
type ReadFunc func(ctx context.Context, k Key) (credits.Balance, error)

// LoadResult is what a timed workload measured.
type LoadResult struct {
	Reads, Writes int64
	Errors        int64
	StaleReads    int64 // reads that began after a write of their key had completed and returned an older version
	ReadLatency   Histogram
	WriteLatency  Histogram
	CPU           CPUUsage
}

// ReadsPerSec returns the read throughput.
func (r *LoadResult) ReadsPerSec() float64 {
	if r.CPU.Wall <= 0 {
		return 0
	}
	return float64(r.Reads) / r.CPU.Wall.Seconds()
}

// MixedLoad describes a timed workload of Zipf-distributed reads and, with
// WriteFraction > 0, writes (Add of 1) of the same keys.
type MixedLoad struct {
	Keys          []Key
	Goroutines    int
	Duration      time.Duration
	WriteFraction float64 // 0: reads only
	ZipfS         float64 // 0: DefaultZipfS
	Seed          uint64
}

// maxErrors stops a workload early: something is wrong, not slow.
const maxErrors = 100

// Run runs the workload: reads with read, writes with write (nil when
// WriteFraction is 0). Stale reads are counted: each key's last completed
// write's version is known, and a read that starts after it must not return
// an older one.
func (l MixedLoad) Run(ctx context.Context, read ReadFunc, write func(ctx context.Context, k Key) (credits.Balance, error)) (*LoadResult, error) {
	if len(l.Keys) == 0 || l.Goroutines < 1 || l.Duration <= 0 {
		return nil, errors.New("bench: a workload needs keys, goroutines and a duration")
	}
	s := l.ZipfS
	if s == 0 {
		s = DefaultZipfS
	}
	written := make([]atomic.Int64, len(l.Keys)) // highest version a completed write returned
	ctx, cancel := context.WithTimeout(ctx, l.Duration)
	defer cancel()

	results := make([]LoadResult, l.Goroutines)
	var firstErr atomic.Pointer[error]
	var errCount atomic.Int64
	var wg sync.WaitGroup
	meter := StartCPU()
	for g := range l.Goroutines {
		wg.Go(func() {
			res := &results[g]
			z := NewZipf(len(l.Keys), s, l.Seed+uint64(g)*7919)
			for ctx.Err() == nil {
				i := z.Next()
				k := l.Keys[i]
				if l.WriteFraction > 0 && z.Float64() < l.WriteFraction {
					start := time.Now()
					b, err := write(ctx, k)
					if err == nil {
						res.WriteLatency.Record(time.Since(start))
						res.Writes++
						for v := written[i].Load(); b.Version > v && !written[i].CompareAndSwap(v, b.Version); v = written[i].Load() {
						}
						continue
					}
					if ctx.Err() == nil {
						res.Errors++
						recordErr(&firstErr, &errCount, err, cancel)
					}
					continue
				}
				want := written[i].Load()
				start := time.Now()
				b, err := read(ctx, k)
				d := time.Since(start)
				if err != nil {
					if ctx.Err() == nil {
						res.Errors++
						recordErr(&firstErr, &errCount, err, cancel)
					}
					continue
				}
				res.ReadLatency.Record(d)
				res.Reads++
				if b.Version < want {
					res.StaleReads++
				}
			}
		})
	}
	wg.Wait()
	total := &LoadResult{CPU: meter.Stop()}
	for i := range results {
		r := &results[i]
		total.Reads += r.Reads
		total.Writes += r.Writes
		total.Errors += r.Errors
		total.StaleReads += r.StaleReads
		total.ReadLatency.Merge(&r.ReadLatency)
		total.WriteLatency.Merge(&r.WriteLatency)
	}
	if p := firstErr.Load(); p != nil && errCount.Load() >= maxErrors {
		return total, fmt.Errorf("bench: %d errors, the first: %w", errCount.Load(), *p)
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return total, err
	}
	return total, nil
}

func recordErr(first *atomic.Pointer[error], n *atomic.Int64, err error, stop context.CancelFunc) {
	first.CompareAndSwap(nil, &err)
	if n.Add(1) >= maxErrors {
		stop()
	}
}

// StampedeResult is what one cold-key stampede measured.
type StampedeResult struct {
	Goroutines int
	Instances  int
	Queries    int64 // balance SELECTs Postgres received
	Errors     int64
	Wall       time.Duration // from the start signal until the last read returned
}

// Stampede makes goroutines readers, spread over instances (one read
// function each), read the cold key k at once, and counts the balance
// SELECTs counter saw meanwhile (nothing else may read balances through a
// pool that counter traces).
func Stampede(ctx context.Context, instances []ReadFunc, k Key, goroutines int, counter *QueryCounter) (StampedeResult, error) {
	res := StampedeResult{Goroutines: goroutines, Instances: len(instances)}
	counter.WaitQuiet(ctx, 20*time.Millisecond, 2*time.Second) // leftovers of the previous workload
	start := make(chan struct{})
	var ready, done sync.WaitGroup
	var errs atomic.Int64
	var firstErr atomic.Pointer[error]
	before := counter.Counts()
	for g := range goroutines {
		ready.Add(1)
		done.Go(func() {
			ready.Done()
			<-start
			if _, err := instances[g%len(instances)](ctx, k); err != nil {
				errs.Add(1)
				firstErr.CompareAndSwap(nil, &err)
			}
		})
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	res.Wall = time.Since(t0)
	res.Queries = counter.Counts().Sub(before).Balances
	res.Errors = errs.Load()
	if p := firstErr.Load(); p != nil {
		return res, fmt.Errorf("stampede: %d of %d reads failed, the first: %w", res.Errors, goroutines, *p)
	}
	return res, nil
}

// StalenessResult is what a staleness probe found.
type StalenessResult struct {
	Keys        int   // keys probed
	Written     int   // keys that received at least one write
	Writes      int64 // writes completed
	Reads       int64 // reads completed
	StaleKeys   int   // keys for which some instance's read, after quiescence, differs from Postgres
	StaleCopies int   // (key, instance) pairs that differ
}

// StalenessProbe runs writers (Add of 1) and readers on keys, spread over
// instances, for d; then waits until everything is quiet (every system's
// Quiesce) and reads every key through every instance, comparing with
// Postgres (truth). A read after quiescence that differs from Postgres is a
// stale value that nothing will correct before its TTL.
func StalenessProbe(ctx context.Context, instances []System, truth ReadFunc, keys []Key, writers, readers int, d time.Duration, seed uint64) (StalenessResult, error) {
	res := StalenessResult{Keys: len(keys)}
	touched := make([]atomic.Bool, len(keys))
	var writes, reads atomic.Int64
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var firstErr atomic.Pointer[error]
	var errCount atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			sys := instances[w%len(instances)]
			z := NewZipf(len(keys), 1.01, seed+uint64(w)*104729)
			for runCtx.Err() == nil {
				i := z.IntN(len(keys))
				if _, err := sys.Add(runCtx, keys[i], 1); err != nil {
					if runCtx.Err() == nil {
						recordErr(&firstErr, &errCount, err, cancel)
					}
					continue
				}
				touched[i].Store(true)
				writes.Add(1)
			}
		})
	}
	for r := range readers {
		wg.Go(func() {
			sys := instances[r%len(instances)]
			z := NewZipf(len(keys), 1.01, seed+uint64(r)*15485863+1)
			for runCtx.Err() == nil {
				if _, err := sys.Balance(runCtx, keys[z.IntN(len(keys))]); err != nil {
					if runCtx.Err() == nil {
						recordErr(&firstErr, &errCount, err, cancel)
					}
					continue
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil && errCount.Load() >= maxErrors {
		return res, fmt.Errorf("staleness probe: %d errors, the first: %w", errCount.Load(), *p)
	}
	res.Writes, res.Reads = writes.Load(), reads.Load()
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	defer qcancel()
	for _, sys := range instances {
		if err := sys.Quiesce(qctx); err != nil {
			return res, fmt.Errorf("staleness probe: quiesce: %w", err)
		}
	}
	for i, k := range keys {
		if touched[i].Load() {
			res.Written++
		}
		want, err := truth(ctx, k)
		if err != nil {
			return res, fmt.Errorf("staleness probe: %w", err)
		}
		stale := false
		for _, sys := range instances {
			got, err := sys.Balance(ctx, k)
			if err != nil {
				return res, fmt.Errorf("staleness probe: %w", err)
			}
			if got.Amount != want.Amount || got.Version != want.Version {
				res.StaleCopies++
				stale = true
			}
		}
		if stale {
			res.StaleKeys++
		}
	}
	return res, nil
}
