package bench

import (
	"math"
	"math/bits"
	"time"
)

// subBuckets is the number of linear buckets per power of two: values are
// recorded with a relative error below 1/subBuckets (about 1.6 %).
const (
	subBits    = 6
	subBuckets = 1 << subBits
	// histBuckets covers every int64 of nanoseconds.
	histBuckets = (64 - subBits + 1) * subBuckets
)

// Histogram records latencies in log-linear buckets (as HdrHistogram does):
// constant memory, O(1) Record, quantiles within about 1.6 %. It is not safe
// for concurrent use: give each goroutine its own and Merge them.
type Histogram struct {
	counts [histBuckets]int64
	n      int64
	sum    time.Duration
	max    time.Duration
}

// bucketOf returns the bucket of v >= 0.
func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	shift := bits.Len64(v) - subBits - 1 // so that v>>shift is in [subBuckets, 2*subBuckets)
	return (shift+1)*subBuckets + int(v>>shift) - subBuckets
}

// bucketMid returns a value in the middle of bucket b.
func bucketMid(b int) time.Duration {
	if b < subBuckets {
		return time.Duration(b)
	}
	shift := b/subBuckets - 1
	low := uint64(b%subBuckets+subBuckets) << shift
	return time.Duration(low + (uint64(1)<<shift)/2)
}

// Record adds one observation; negative durations count as 0.
func (h *Histogram) Record(d time.Duration) {
	d = max(d, 0)
	h.counts[bucketOf(uint64(d))]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

// Merge adds o's observations to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count returns the number of observations.
func (h *Histogram) Count() int64 { return h.n }

// Mean returns the mean observation, 0 when there is none.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// Max returns the largest observation.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the q-quantile (0 < q <= 1) of the observations, within
// one bucket's width; 0 when there is none.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen int64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(bucketMid(b), h.max)
		}
	}
	return h.max
}
