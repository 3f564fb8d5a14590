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
	// MinLoads is a lower bound on the Postgres loads any cache that
	// deletes a key on write needs for these reads (LoadBound).
	MinLoads     int64
	ReadLatency  Histogram
	WriteLatency Histogram
	CPU          CPUUsage
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

// Run runs the workload on the engine (Workload): reads with read, writes
// with write (nil when WriteFraction is 0). Stale reads are counted
// (Freshness): each key's last completed write's version is known, and a
// read that starts after it must not return an older one.
func (l MixedLoad) Run(ctx context.Context, read ReadFunc, write func(ctx context.Context, k Key) (credits.Balance, error)) (*LoadResult, error) {
	if len(l.Keys) == 0 || l.Goroutines < 1 || l.Duration <= 0 {
		return nil, errors.New("bench: a workload needs keys, goroutines and a duration")
	}
	s := l.ZipfS
	if s == 0 {
		s = DefaultZipfS
	}
	fresh, bound := NewFreshness(len(l.Keys)), NewLoadBound(len(l.Keys))
	if l.WriteFraction >= 1 {
		return nil, errors.New("bench: a workload needs reads (WriteFraction < 1)")
	}
	ops := []Op{{Name: "read", Weight: 1 - l.WriteFraction, Start: func(seed uint64) func(context.Context) error {
		z := NewZipf(len(l.Keys), s, seed)
		return func(ctx context.Context) error {
			i := z.Next()
			floor, from := fresh.Begin(i), bound.Begin(i)
			b, err := read(ctx, l.Keys[i])
			if err == nil {
				fresh.Read(floor, b.Version)
				bound.Read(i, from)
			}
			return err
		}
	}}}
	if l.WriteFraction > 0 {
		ops = append(ops, Op{Name: "write", Weight: l.WriteFraction, Start: func(seed uint64) func(context.Context) error {
			z := NewZipf(len(l.Keys), s, seed)
			return func(ctx context.Context) error {
				i := z.Next()
				start := bound.Now()
				b, err := write(ctx, l.Keys[i])
				if err == nil {
					fresh.Wrote(i, b.Version)
					bound.Wrote(i, start)
				}
				return err
			}
		}})
	}
	w := Workload{Duration: l.Duration, Seed: l.Seed, Groups: []Group{{Goroutines: l.Goroutines, Ops: ops}}}
	r, err := w.Run(ctx)
	if err != nil {
		return nil, err
	}
	reads, writes := r.Op("read"), r.Op("write")
	total := &LoadResult{
		Reads: reads.Done, Writes: writes.Done, Errors: r.Failed, StaleReads: fresh.Stale(), MinLoads: bound.Loads(),
		ReadLatency: reads.Latency, WriteLatency: writes.Latency, CPU: r.CPU,
	}
	if r.Stopped {
		return total, fmt.Errorf("bench: %d errors, the first: %w", r.Failed, r.FirstErr)
	}
	return total, nil
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
	// Uniform key choice (IntN), so that every key sees writes and fills.
	write := Op{Name: "write", Weight: 1, Start: func(seed uint64) func(context.Context) error {
		z := NewZipf(len(keys), 1.01, seed)
		return func(ctx context.Context) error {
			i := z.IntN(len(keys))
			sys := instances[z.IntN(len(instances))]
			if _, err := sys.Add(ctx, keys[i], 1); err != nil {
				return err
			}
			touched[i].Store(true)
			return nil
		}
	}}
	read := Op{Name: "read", Weight: 1, Start: func(seed uint64) func(context.Context) error {
		z := NewZipf(len(keys), 1.01, seed)
		return func(ctx context.Context) error {
			_, err := instances[z.IntN(len(instances))].Balance(ctx, keys[z.IntN(len(keys))])
			return err
		}
	}}
	w := Workload{Duration: d, Seed: seed, Groups: []Group{{Goroutines: writers, Ops: []Op{write}}, {Goroutines: readers, Ops: []Op{read}}}}
	r, err := w.Run(ctx)
	if err != nil {
		return res, err
	}
	if r.Stopped {
		return res, fmt.Errorf("staleness probe: %d errors, the first: %w", r.Failed, r.FirstErr)
	}
	res.Writes, res.Reads = r.Op("write").Done, r.Op("read").Done
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	defer qcancel()
	for _, sys := range instances {
		if err := sys.Quiesce(qctx); err != nil {
			return res, fmt.Errorf("staleness probe: quiesce: %w", err)
		}
	}
	for i := range touched {
		if touched[i].Load() {
			res.Written++
		}
	}
	// Read every key through every instance, one key at a time per
	// worker, and hold each copy against Postgres.
	cmp, err := Compare(ctx, len(keys), func(ctx context.Context, i int) (int, []string, error) {
		want, err := truth(ctx, keys[i])
		if err != nil {
			return 0, nil, err
		}
		var diffs []string
		for n, sys := range instances {
			got, err := sys.Balance(ctx, keys[i])
			if err != nil {
				return 0, nil, err
			}
			if got.Amount != want.Amount || got.Version != want.Version {
				diffs = append(diffs, fmt.Sprintf("%s on instance %d: %d (version %d), Postgres %d (version %d)",
					credits.Key(keys[i].UserID, keys[i].Type), n, got.Amount, got.Version, want.Amount, want.Version))
			}
		}
		return len(instances), diffs, nil
	})
	if err != nil {
		return res, fmt.Errorf("staleness probe: %w", err)
	}
	res.StaleKeys, res.StaleCopies = cmp.StaleKeys, cmp.Mismatches
	return res, nil
}
