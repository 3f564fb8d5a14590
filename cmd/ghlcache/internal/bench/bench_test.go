package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHistogramQuantiles(t *testing.T) {
	t.Parallel()
	var h Histogram
	for i := 1; i <= 10_000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	require.EqualValues(t, 10_000, h.Count())
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {0.999, 9990 * time.Microsecond}, {1, 10 * time.Millisecond}} {
		got := h.Quantile(tc.q)
		require.InEpsilon(t, float64(tc.want), float64(got), 0.02, "q=%v: %v", tc.q, got)
	}
	require.InEpsilon(t, float64(5000500*time.Nanosecond), float64(h.Mean()), 0.001)
	require.Equal(t, 10*time.Millisecond, h.Max())

	var other Histogram
	other.Record(time.Second)
	h.Merge(&other)
	require.EqualValues(t, 10_001, h.Count())
	require.Equal(t, time.Second, h.Quantile(1))

	var empty Histogram
	require.Zero(t, empty.Quantile(0.5))
	require.Zero(t, empty.Mean())
}

func TestHistogramBuckets(t *testing.T) {
	t.Parallel()
	// Every bucket's middle maps back to the bucket, and buckets are
	// ordered, over the whole range.
	prev := -1
	for v := uint64(1); v < 1<<62; v = v*3/2 + 1 {
		b := bucketOf(v)
		require.GreaterOrEqual(t, b, prev)
		require.Less(t, b, histBuckets)
		require.Equal(t, b, bucketOf(uint64(bucketMid(b))), "v=%d", v)
		prev = b
	}
}

func TestZipf(t *testing.T) {
	t.Parallel()
	const n = 1000
	z := NewZipf(n, DefaultZipfS, 1)
	counts := make([]int, n)
	for range 100_000 {
		i := z.Next()
		require.True(t, i >= 0 && i < n)
		counts[i]++
	}
	require.Greater(t, counts[0], counts[1])
	require.Greater(t, counts[1], counts[10])
	require.Greater(t, counts[0], 10_000, "the hottest key is hot")
	// Same seed, same sequence.
	a, b := NewZipf(n, DefaultZipfS, 7), NewZipf(n, DefaultZipfS, 7)
	for range 100 {
		require.Equal(t, a.Next(), b.Next())
	}
}

func TestInfoField(t *testing.T) {
	t.Parallel()
	info := "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"
	require.Equal(t, "7.0.15", InfoField(info, "redis_version"))
	require.Empty(t, InfoField(info, "nope"))
}

func TestCPU(t *testing.T) {
	t.Parallel()
	m := StartCPU()
	deadline := time.Now().Add(20 * time.Millisecond)
	for time.Now().Before(deadline) { // burn a little CPU, bounded
	}
	u := m.Stop()
	require.Positive(t, u.Wall)
	require.Positive(t, u.Process)
}

func BenchmarkZipfNext(b *testing.B) {
	z := NewZipf(10_000, DefaultZipfS, 1)
	b.ReportAllocs()
	for b.Loop() {
		_ = z.Next()
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	d := time.Duration(0)
	for b.Loop() {
		d += 997
		h.Record(d % (10 * time.Millisecond))
	}
}

func TestPairedRatio(t *testing.T) {
	t.Parallel()
	// Round by round 2, 1 and 3: the median is 2, where the medians'
	// ratio would be 4 / 3.
	require.Equal(t, 2.0, PairedRatio([]float64{2, 4, 9}, []float64{1, 4, 3}))
	require.Equal(t, 1.5, PairedRatio([]Duration{3, 10}, []Duration{2, 0}), "a round without a figure is left out")
	require.Zero(t, PairedRatio([]float64{1, 2}, []float64{1}), "rounds that do not pair up")
	require.Zero(t, PairedRatio[float64](nil, nil))
}
