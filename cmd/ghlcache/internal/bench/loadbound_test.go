package bench

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadBoundCountsTheFewestFreshLoads(t *testing.T) {
	t.Parallel()
	b := NewLoadBound(2)
	var tick int64
	b.clock = func() int64 { tick++; return tick }
	read := func(i int) func() { // begins now; the returned func ends it
		from := b.Begin(i)
		return func() { b.Read(i, from) }
	}
	write := func(i int) func() {
		start := b.Now()
		return func() { b.Wrote(i, start) }
	}

	// Cold: the first read of each key loads; a later read of it does not.
	read(0)()
	read(0)()
	require.EqualValues(t, 1, b.Loads())
	read(1)()
	require.EqualValues(t, 2, b.Loads())

	// A read that began before a write completed may be answered by the
	// load before the write; one that begins after it may not.
	endEarly := read(0)
	w := write(0)
	endEarly2 := read(0)
	w()
	endEarly()
	endEarly2()
	require.EqualValues(t, 2, b.Loads(), "reads that began before the write completed")
	read(0)()
	require.EqualValues(t, 3, b.Loads(), "the first read after the write")

	// Reads that overlap after a write share one load: it can start after
	// the write and before the first of them ends.
	write(0)()
	a, c := read(0), read(0)
	a()
	c()
	require.EqualValues(t, 4, b.Loads())

	// A write of another key, or a failed write (never recorded), forces
	// nothing.
	write(1)
	read(0)()
	require.EqualValues(t, 4, b.Loads())
}

func TestLoadBoundConcurrent(t *testing.T) {
	t.Parallel()
	const keys, goroutines, rounds = 8, 8, 2000
	b := NewLoadBound(keys)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for r := range rounds {
				i := (g + r) % keys
				from := b.Begin(i)
				b.Read(i, from)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, keys, b.Loads(), "reads only: one load per key")
}
