package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
)

func TestWorkloadTalliesEachOperation(t *testing.T) {
	t.Parallel()
	errRefused := errors.New("refused")
	var calls atomic.Int64
	op := func(name string, weight float64, result error) Op {
		return Op{Name: name, Weight: weight, Refused: []error{errRefused}, Start: func(uint64) func(context.Context) error {
			return func(context.Context) error { calls.Add(1); return result }
		}}
	}
	w := Workload{Duration: 50 * time.Millisecond, Groups: []Group{
		{Goroutines: 2, Ops: []Op{op("ok", 9, nil), op("refused", 1, fmt.Errorf("wrapped: %w", errRefused))}},
		{Goroutines: 1, Ops: []Op{op("also ok", 1, nil)}},
	}}
	r, err := w.Run(t.Context())
	require.NoError(t, err)
	ok, refused, also := r.Op("ok"), r.Op("refused"), r.Op("also ok")
	require.Positive(t, ok.Done)
	require.Positive(t, refused.Refused)
	require.Zero(t, refused.Done)
	require.Positive(t, also.Done)
	require.EqualValues(t, calls.Load(), ok.Done+refused.Refused+also.Done)
	require.EqualValues(t, ok.Done, ok.Latency.Count())
	require.Zero(t, r.Failed)
	require.False(t, r.Stopped)
	require.Positive(t, r.CPU.Wall)
	require.Greater(t, ok.Done, refused.Refused, "weights choose the operations")
}

// A call in flight when Duration ends is not cancelled: it finishes and is
// counted (a write cut short could still commit after Run returned).
func TestWorkloadLetsCallsInFlightFinish(t *testing.T) {
	t.Parallel()
	const d = 50 * time.Millisecond
	var (
		first      atomic.Bool
		sawCancel  atomic.Bool
		finishedIn = make(chan struct{})
	)
	w := Workload{Duration: d, Groups: []Group{{Goroutines: 1, Ops: []Op{{
		Name: "slow", Weight: 1, Start: func(uint64) func(context.Context) error {
			return func(ctx context.Context) error {
				if first.Swap(true) {
					return nil
				}
				// This timer starts after the run's deadline was set and
				// is longer, so it fires after the run's end.
				select {
				case <-ctx.Done():
					sawCancel.Store(true)
					return ctx.Err()
				case <-time.After(2 * d):
					close(finishedIn)
					return nil
				}
			}
		},
	}}}}}
	r, err := w.Run(t.Context())
	require.NoError(t, err)
	require.False(t, sawCancel.Load(), "the run's end cancelled a call in flight")
	<-finishedIn
	require.EqualValues(t, 1, r.Op("slow").Done)
	require.Zero(t, r.Failed)
}

func TestWorkloadStopsAfterMaxErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	w := Workload{Duration: time.Minute, MaxErrors: 10, Groups: []Group{{Goroutines: 4, Ops: []Op{{
		Name: "fail", Weight: 1, Start: func(uint64) func(context.Context) error {
			return func(context.Context) error { return boom }
		},
	}}}}}
	start := time.Now()
	r, err := w.Run(t.Context())
	require.NoError(t, err)
	require.Less(t, time.Since(start), 10*time.Second)
	require.True(t, r.Stopped)
	require.GreaterOrEqual(t, r.Failed, int64(10))
	require.ErrorIs(t, r.FirstErr, boom)
}

func TestWorkloadRejectsBadOps(t *testing.T) {
	t.Parallel()
	start := func(uint64) func(context.Context) error { return func(context.Context) error { return nil } }
	for _, w := range []Workload{
		{Duration: time.Second},
		{Duration: time.Second, Groups: []Group{{Goroutines: 1}}},
		{Duration: time.Second, Groups: []Group{{Goroutines: 1, Ops: []Op{{Name: "a", Weight: 0, Start: start}}}}},
		{Duration: time.Second, Groups: []Group{{Goroutines: 1, Ops: []Op{{Name: "a", Weight: 1, Start: start}, {Name: "a", Weight: 1, Start: start}}}}},
	} {
		_, err := w.Run(t.Context())
		require.Error(t, err)
	}
}

func TestFreshness(t *testing.T) {
	t.Parallel()
	f := NewFreshness(2)
	floor := f.Begin(0)
	f.Wrote(0, 3)
	require.False(t, f.Read(floor, 2), "the read began before the write completed")
	f.Wrote(0, 2) // an older write completing late does not lower the floor
	floor = f.Begin(0)
	require.True(t, f.Read(floor, 2))
	require.False(t, f.Read(floor, 3))
	require.False(t, f.Read(f.Begin(1), 0))
	require.EqualValues(t, 1, f.Stale())
}

func TestForEachPrefersAnError(t *testing.T) {
	t.Parallel()
	seen := make([]atomic.Bool, 100)
	require.NoError(t, ForEach(t.Context(), len(seen), 8, nil, func(_ context.Context, i int) error {
		seen[i].Store(true)
		return nil
	}))
	for i := range seen {
		require.True(t, seen[i].Load(), i)
	}
	unavailable := func(err error) bool { return errors.Is(err, cachelayer.ErrUnavailable) }
	// Every worker enters fn before any fails (the first failure stops
	// the others): then all eight errors are there to choose from.
	var entered sync.WaitGroup
	entered.Add(8)
	err := ForEach(t.Context(), 8, 8, unavailable, func(_ context.Context, i int) error {
		entered.Done()
		entered.Wait()
		if i == 5 {
			return fmt.Errorf("get: %w", cachelayer.ErrUnavailable)
		}
		return fmt.Errorf("timeout %d", i)
	})
	require.ErrorIs(t, err, cachelayer.ErrUnavailable)
}

func TestCompare(t *testing.T) {
	t.Parallel()
	c, err := Compare(t.Context(), 20, func(_ context.Context, i int) (int, []string, error) {
		switch {
		case i%10 == 0:
			return 2, []string{fmt.Sprint(i, "a"), fmt.Sprint(i, "b")}, nil
		case i%2 == 0:
			return 0, nil, nil // nothing cached
		}
		return 2, nil, nil
	})
	require.NoError(t, err)
	require.Equal(t, 20, c.Keys)
	require.Equal(t, 2*12, c.Cached)
	require.Equal(t, 2, c.StaleKeys)
	require.Equal(t, 4, c.Mismatches)
	require.Len(t, c.Examples, 4)
}

func TestDrain(t *testing.T) {
	t.Parallel()
	t.Run("empties", func(t *testing.T) {
		t.Parallel()
		var depth atomic.Int64
		depth.Store(3)
		d := Drainer{Timeout: 10 * time.Second, Poll: time.Millisecond, Outboxes: []Outbox{{
			Sweep: func(context.Context) error { depth.Add(-1); return nil },
			Depth: func(context.Context) (int64, error) { return depth.Load(), nil },
		}}}
		n, err := d.Drain(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		d := Drainer{Timeout: 10 * time.Second, Poll: time.Millisecond, UnreachableGrace: 20 * time.Millisecond,
			Healthy: func(context.Context) bool { return false },
			Outboxes: []Outbox{{
				Sweep: func(context.Context) error { return cachelayer.ErrUnavailable },
				Depth: func(context.Context) (int64, error) { return 4, nil },
			}}}
		n, err := d.Drain(t.Context())
		require.ErrorIs(t, err, ErrRedisUnreachable)
		require.EqualValues(t, 4, n)
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		d := Drainer{Timeout: 30 * time.Millisecond, Poll: time.Millisecond, Outboxes: []Outbox{{
			Sweep: func(context.Context) error { return nil },
			Depth: func(context.Context) (int64, error) { return 1, nil },
		}}}
		_, err := d.Drain(t.Context())
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorContains(t, err, "still holds 1 invalidation(s) after 30ms")
	})
}

func TestWorkloadPacedGroupKeepsItsSchedule(t *testing.T) {
	t.Parallel()
	var paced, free atomic.Int64
	op := func(name string, n *atomic.Int64) Op {
		return Op{Name: name, Weight: 1, Start: func(uint64) func(context.Context) error {
			return func(context.Context) error { n.Add(1); return nil }
		}}
	}
	// 200 per second for 100 ms: slots at 0, 5, …, 95 ms, whatever the
	// number of goroutines; the slot at 100 ms falls after the run.
	w := Workload{Duration: 100 * time.Millisecond, Groups: []Group{
		{Goroutines: 8, Rate: 200, Ops: []Op{op("paced", &paced)}},
		{Goroutines: 1, Ops: []Op{op("free", &free)}},
	}}
	r, err := w.Run(t.Context())
	require.NoError(t, err)
	require.Equal(t, paced.Load(), r.Op("paced").Done)
	require.Positive(t, r.Op("paced").Done)
	require.LessOrEqual(t, r.Op("paced").Done, int64(20), "no more than the schedule's slots")
	require.Greater(t, r.Op("free").Done, int64(20), "an unpaced group is not held to it")
}
