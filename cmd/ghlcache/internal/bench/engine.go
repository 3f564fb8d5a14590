package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Workload is the one engine behind every timed run of the demo and the
// bench: groups of goroutines that each run, again and again until
// Duration has passed, one of their group's operations chosen at random by
// weight, and a tally of each operation.
type Workload struct {
	Duration time.Duration
	Groups   []Group
	Seed     uint64 // each goroutine's randomness derives from it
	// MaxErrors failed operations stop the run early (something is wrong,
	// not slow); 0 means DefaultMaxErrors.
	MaxErrors int64
	// Progress, if set, is called about every ProgressEvery with the time
	// elapsed since the start.
	Progress      func(elapsed time.Duration)
	ProgressEvery time.Duration
}

// Group is goroutines that share a mix of operations.
type Group struct {
	Goroutines int
	Ops        []Op
	// Rate, if positive, paces the group: its operations start on a fixed
	// schedule of Rate per second in all (the n-th at n/Rate after the
	// start), each taken by the next goroutine free; one that starts late
	// (every goroutine busy) starts at once, and the schedule does not slip.
	// An open loop: the group's load does not follow how fast the system
	// answers. 0: each goroutine starts its next operation as soon as its
	// last one returns.
	Rate float64
}

// Op is one kind of operation of a workload.
type Op struct {
	Name   string  // unique in the workload; Result.Op finds it by name
	Weight float64 // relative to the other operations of its group
	// Start returns the operation as one goroutine runs it, with seed for
	// its own random choices (a goroutine's Zipf generators, say): each
	// goroutine calls Start once.
	Start func(seed uint64) func(ctx context.Context) error
	// Refused are answers that are no failure (insufficient credits, a
	// save that lost a race): an error that Is one of them counts as
	// Refused, not Failed.
	Refused []error
}

// DefaultMaxErrors is the failed operations that stop a workload when
// Workload.MaxErrors is 0.
const DefaultMaxErrors = 100

// DrainTimeout bounds how long the operations in flight at the end of a
// workload's Duration may take to finish before their context is
// cancelled.
const DrainTimeout = 30 * time.Second

// OpResult is the tally of one operation.
type OpResult struct {
	Name    string
	Done    int64     // succeeded
	Refused int64     // ended with one of the Op's Refused errors
	Failed  int64     // ended with another error (not counting calls cut short by the run's end)
	Latency Histogram // of the operations that succeeded
}

// Result is what a workload measured.
type Result struct {
	Ops      []OpResult // in the order of the groups and their operations
	Failed   int64      // failed operations, every kind
	FirstErr error      // the first of them
	Stopped  bool       // MaxErrors failures ended the run early
	CPU      CPUUsage
}

// Op returns the tally of the operation name (a zero one if there is none).
func (r *Result) Op(name string) *OpResult {
	for i := range r.Ops {
		if r.Ops[i].Name == name {
			return &r.Ops[i]
		}
	}
	return &OpResult{Name: name}
}

// Run runs the workload until its duration has passed, MaxErrors
// operations failed, or ctx ends; it returns ctx's error if ctx ended
// first (the result then holds what ran).
//
// The end of Duration stops goroutines from starting operations; it does
// not cancel the ones in flight, which finish (within DrainTimeout) and are
// tallied. Cancelling a write mid-call would leave it neither done nor
// undone: its COMMIT may still land after Run has returned, and a check
// that follows the run (the staleness probe's comparison with Postgres)
// would see it land. MaxErrors and ctx do cancel the calls in flight.
func (w Workload) Run(ctx context.Context) (*Result, error) {
	if w.Duration <= 0 || len(w.Groups) == 0 {
		return nil, errors.New("bench: a workload needs a duration and goroutines")
	}
	index := map[string]int{} // op name → index in Result.Ops
	var names []string
	for _, g := range w.Groups {
		if g.Goroutines < 1 || len(g.Ops) == 0 {
			return nil, errors.New("bench: every group of a workload needs goroutines and operations")
		}
		for _, op := range g.Ops {
			if _, dup := index[op.Name]; dup || op.Weight <= 0 || op.Start == nil {
				return nil, fmt.Errorf("bench: operation %q: want a unique name, a positive weight and Start", op.Name)
			}
			index[op.Name] = len(names)
			names = append(names, op.Name)
		}
	}
	maxErrors := w.MaxErrors
	if maxErrors <= 0 {
		maxErrors = DefaultMaxErrors
	}
	// opCtx is the calls' context; runCtx, ending with Duration, only
	// says whether to start another.
	opCtx, opCancel := context.WithCancel(ctx)
	defer opCancel()
	runCtx, cancel := context.WithTimeout(opCtx, w.Duration)
	defer cancel()
	drain := time.AfterFunc(w.Duration+DrainTimeout, opCancel)
	defer drain.Stop()

	var (
		mu       sync.Mutex // guards firstErr and the merge into res
		firstErr error
		failed   atomic.Int64
		stopped  atomic.Bool
		wg       sync.WaitGroup
	)
	res := &Result{Ops: make([]OpResult, len(names))}
	for i, n := range names {
		res.Ops[i].Name = n
	}
	meter := StartCPU()
	begin := time.Now()
	gid := uint64(0)
	for _, g := range w.Groups {
		total := 0.0
		for _, op := range g.Ops {
			total += op.Weight
		}
		var slots atomic.Int64 // a paced group's next slot
		for range g.Goroutines {
			seed := w.Seed + gid*7919
			gid++
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(seed, seed^0x2545f4914f6cdd1d))
				runs := make([]func(context.Context) error, len(g.Ops))
				for i, op := range g.Ops {
					runs[i] = op.Start(seed + uint64(i+1)*104729)
				}
				tally := make([]OpResult, len(g.Ops))
				for runCtx.Err() == nil {
					if g.Rate > 0 && !waitSlot(runCtx, begin, w.Duration, g.Rate, &slots) {
						break
					}
					i := pick(g.Ops, rng.Float64()*total)
					start := time.Now()
					err := runs[i](opCtx)
					t := &tally[i]
					switch {
					case err == nil:
						t.Latency.Record(time.Since(start))
						t.Done++
					case isAny(err, g.Ops[i].Refused):
						t.Refused++
					case opCtx.Err() != nil: // the run was stopped mid-call
					default:
						t.Failed++
						n := failed.Add(1)
						if n == 1 {
							mu.Lock()
							firstErr = err
							mu.Unlock()
						}
						if n >= maxErrors {
							stopped.Store(true)
							opCancel()
						}
					}
				}
				mu.Lock()
				defer mu.Unlock()
				for i, op := range g.Ops {
					r, t := &res.Ops[index[op.Name]], &tally[i]
					r.Done += t.Done
					r.Refused += t.Refused
					r.Failed += t.Failed
					r.Latency.Merge(&t.Latency)
				}
			})
		}
	}
	if w.Progress != nil && w.ProgressEvery > 0 {
		start := time.Now()
		tick := time.NewTicker(w.ProgressEvery)
	progress:
		for {
			select {
			case <-runCtx.Done():
				break progress
			case <-tick.C:
				w.Progress(time.Since(start))
			}
		}
		tick.Stop()
	}
	wg.Wait()
	res.CPU = meter.Stop()
	res.Failed, res.FirstErr, res.Stopped = failed.Load(), firstErr, stopped.Load()
	return res, ctx.Err()
}

// waitSlot takes the next slot of a paced group (Group.Rate) and waits
// for its time; it reports false when the slot falls after the run's
// Duration, or the run ends first.
func waitSlot(runCtx context.Context, begin time.Time, d time.Duration, rate float64, slots *atomic.Int64) bool {
	at := time.Duration(float64(slots.Add(1)-1) / rate * float64(time.Second))
	if at >= d {
		return false
	}
	wait := time.Until(begin.Add(at))
	if wait <= 0 {
		return true // late: at once
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-runCtx.Done():
		return false
	}
}

// pick returns the index of the operation that x, in [0, total weight),
// falls on.
func pick(ops []Op, x float64) int {
	for i, op := range ops {
		if x < op.Weight {
			return i
		}
		x -= op.Weight
	}
	return len(ops) - 1
}

func isAny(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// ForEach calls fn for every index in [0, n) from workers goroutines and
// returns the first error (the others then stop); where several failed and
// one of them is preferred (prefer reports true), that one.
func ForEach(ctx context.Context, n, workers int, prefer func(error) bool, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n && ctx.Err() == nil; i += workers {
				if err := fn(ctx, i); err != nil {
					errs[w] = err
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if prefer != nil && prefer(err) {
			return err
		}
		if first == nil || errors.Is(first, context.Canceled) {
			first = err
		}
	}
	if first == nil {
		return ctx.Err()
	}
	return first
}
