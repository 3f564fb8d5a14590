package bench

import "math/rand/v2"

// DefaultZipfS is the skew of the read workloads: with 10 000 keys the
// hottest 1 % of keys receive about half of the reads, a common shape for
// per-user data.
const DefaultZipfS = 1.1

// Zipf draws indexes in [0, n) with a Zipf distribution of skew s (> 1):
// index 0 is the most frequent. It is not safe for concurrent use; give each
// goroutine its own (NewZipf with a distinct seed).
type Zipf struct {
	z *rand.Zipf
	r *rand.Rand
}

// NewZipf returns a generator over n >= 1 indexes with skew s > 1, seeded
// with seed (the same seed gives the same sequence).
func NewZipf(n int, s float64, seed uint64) *Zipf {
	if n < 1 || s <= 1 {
		panic("bench: NewZipf needs n >= 1 and s > 1")
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return &Zipf{z: rand.NewZipf(r, s, 1, uint64(n-1)), r: r}
}

// Next returns the next index.
func (z *Zipf) Next() int { return int(z.z.Uint64()) }

// Float64 returns a uniform float in [0, 1) from the same source, for the
// caller's other choices (read or write, which credit type).
func (z *Zipf) Float64() float64 { return z.r.Float64() }

// IntN returns a uniform int in [0, n) from the same source.
func (z *Zipf) IntN(n int) int { return z.r.IntN(n) }
