package bench

import (
	"sync/atomic"
	"time"
)

// LoadBound counts, while a workload runs, a lower bound on the Postgres
// loads that any cache deleting a key on every write (DESIGN rule 4) needs
// to answer the workload's reads freshly, starting from a cold cache. It is
// the yardstick for "SELECTs per read": what no delete-on-write cache can
// go under on the same sequence of reads and writes, whatever its design.
//
// A read of key i that began after a write of i had completed must return
// that write's effect, so the value it returns was loaded by a SELECT that
// started after the write started (its commit is later still) and before
// the read ended; the first read of a key after the start of the workload
// needs a SELECT after the start (the cache is cold). Each read is thus an
// interval of time that must hold the start of some SELECT of its key; the
// fewest SELECTs are the fewest points that stab every interval, which the
// greedy choice by earliest end finds. LoadBound runs that greedy choice
// online, as reads end. Taking the write's start for its commit, and a
// failed write for no write, only widens intervals, so the count stays a
// lower bound.
//
// Keys are indexes in [0, n). It is safe for concurrent use.
type LoadBound struct {
	t0     time.Time
	writes []atomic.Int64 // per key: the latest start among completed writes (ticks; 0 none)
	points []atomic.Int64 // per key: the last SELECT the greedy choice placed (ticks; 0 none)
	loads  atomic.Int64
	clock  func() int64 // tests' clock; nil: time since t0
}

// NewLoadBound returns a LoadBound over n keys whose workload starts now.
func NewLoadBound(n int) *LoadBound {
	return &LoadBound{t0: time.Now(), writes: make([]atomic.Int64, n), points: make([]atomic.Int64, n)}
}

// Now returns the current time in LoadBound's ticks (nanoseconds since
// NewLoadBound, plus one: 0 stands for "none").
func (b *LoadBound) Now() int64 {
	if b.clock != nil {
		return b.clock()
	}
	return int64(time.Since(b.t0)) + 1
}

// Wrote records that a write of key i, begun at start (Now), completed.
func (b *LoadBound) Wrote(i int, start int64) { raise(&b.writes[i], start) }

// Begin returns the earliest time a SELECT may start to answer a read of
// key i that begins now; pass it to Read when the read ends.
func (b *LoadBound) Begin(i int) int64 { return max(b.writes[i].Load(), 1) }

// Read records that a read of key i, whose Begin gave from, ended now.
func (b *LoadBound) Read(i int, from int64) {
	end := b.Now()
	for {
		p := b.points[i].Load()
		if p >= from {
			return // the last SELECT placed serves this read too
		}
		if b.points[i].CompareAndSwap(p, end) {
			b.loads.Add(1)
			return
		}
	}
}

// Loads returns the lower bound counted so far.
func (b *LoadBound) Loads() int64 { return b.loads.Load() }
