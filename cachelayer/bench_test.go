package cachelayer

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Benchmarks against the real Redis (TEST_REDIS_URL):
//
//	go test -run '^$' -bench 'FetchHit|RawGetDecode|FetchMiss' -benchmem ./cachelayer
//
// BenchmarkRawGetDecode is the floor of any Redis-backed hit: a go-redis GET
// of the very bytes Fetch reads, and the same codec's decode. Target: a
// Fetch hit at least as fast as it, at 1, 16 and 64 goroutines, with at most
// 3 allocations more. BenchmarkFetchMiss reads a key nobody cached: the read,
// the (trivial) load and the fill. The Spread variants read 1000 keys round
// robin instead of one hot key.

var benchGoroutines = []int{1, 16, 64}

// runGoroutines runs op b.N times in total across g goroutines.
func runGoroutines(b *testing.B, g int, op func(ctx context.Context) error) {
	ctx := context.Background()
	b.ReportAllocs()
	if g == 1 {
		b.ResetTimer()
		for b.Loop() {
			if err := op(ctx); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism((g + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkFetchHit(b *testing.B) {
	for _, g := range benchGoroutines {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			// A generous OpTimeout: on a loaded machine a 100 ms timeout now
			// and then would turn a hit into a fallback; the hit path costs
			// the same whatever the timeout.
			c, _ := realCache(b, &Config{OpTimeout: time.Second})
			load := func(context.Context) (row, error) { return sampleRow(1), nil }
			if _, err := Fetch(context.Background(), c, "bench", time.Hour, load); err != nil {
				b.Fatal(err)
			}
			runGoroutines(b, g, func(ctx context.Context) error {
				v, err := Fetch(ctx, c, "bench", time.Hour, load)
				if err == nil && v.UserID != 1 {
					err = fmt.Errorf("got %+v", v)
				}
				return err
			})
			b.StopTimer()
			if st := c.Stats(); st.Loads != 1 || st.RedisErrors != 0 {
				b.Fatalf("not all hits: %+v", st)
			}
		})
	}
}

func BenchmarkRawGetDecode(b *testing.B) {
	for _, g := range benchGoroutines {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			c, rdb := realCache(b, nil)
			if err := c.Set(context.Background(), "bench", sampleRow(1), time.Hour); err != nil {
				b.Fatal(err)
			}
			full := c.FullKey("bench")
			runGoroutines(b, g, func(ctx context.Context) error {
				data, err := rdb.Get(ctx, full).Bytes()
				return decodeRawRow(data, err)
			})
		})
	}
}

func BenchmarkFetchMiss(b *testing.B) {
	for _, g := range benchGoroutines {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			c, _ := realCache(b, &Config{OpTimeout: time.Second})
			load := func(context.Context) (row, error) { return sampleRow(1), nil }
			var n atomic.Int64
			runGoroutines(b, g, func(ctx context.Context) error {
				key := "miss:" + strconv.FormatInt(n.Add(1), 10)
				v, err := Fetch(ctx, c, key, time.Minute, load)
				if err == nil && v.UserID != 1 {
					err = fmt.Errorf("got %+v", v)
				}
				return err
			})
			b.StopTimer()
			if st := c.Stats(); st.Hits != 0 || st.RedisErrors != 0 || st.Loads != n.Load() {
				b.Fatalf("not all misses with one load: %+v", st)
			}
		})
	}
}

// spreadKeys is how many keys the Spread benchmarks read, round robin per
// goroutine: hits of many keys, as a Zipf workload's tail, where no two
// readers of one key meet.
const spreadKeys = 1000

func BenchmarkFetchHitSpread(b *testing.B) {
	for _, g := range benchGoroutines {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			c, _ := realCache(b, &Config{OpTimeout: time.Second})
			keys := make([]string, spreadKeys)
			for i := range keys {
				keys[i] = "spread:" + strconv.Itoa(i)
				if err := c.Set(context.Background(), keys[i], sampleRow(1), time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			load := func(context.Context) (row, error) { return sampleRow(1), nil }
			var next atomic.Int64
			runGoroutines(b, g, func(ctx context.Context) error {
				v, err := Fetch(ctx, c, keys[next.Add(1)%spreadKeys], time.Hour, load)
				if err == nil && v.UserID != 1 {
					err = fmt.Errorf("got %+v", v)
				}
				return err
			})
			b.StopTimer()
			if st := c.Stats(); st.Loads != 0 || st.RedisErrors != 0 {
				b.Fatalf("not all hits: %+v", st)
			}
		})
	}
}

func BenchmarkRawGetDecodeSpread(b *testing.B) {
	for _, g := range benchGoroutines {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			c, rdb := realCache(b, nil)
			full := make([]string, spreadKeys)
			for i := range full {
				key := "spread:" + strconv.Itoa(i)
				if err := c.Set(context.Background(), key, sampleRow(1), time.Hour); err != nil {
					b.Fatal(err)
				}
				full[i] = c.FullKey(key)
			}
			var next atomic.Int64
			runGoroutines(b, g, func(ctx context.Context) error {
				data, err := rdb.Get(ctx, full[next.Add(1)%spreadKeys]).Bytes()
				return decodeRawRow(data, err)
			})
		})
	}
}

// BenchmarkRawSetNXGetDecode is BenchmarkRawGetDecode with the command
// Fetch reads with, SET key <lease> NX GET PX: what the read's lease costs
// over a plain GET (the choice between them, see docs/design.md).
func BenchmarkRawSetNXGetDecode(b *testing.B) {
	for _, g := range benchGoroutines {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			c, rdb := realCache(b, nil)
			if err := c.Set(context.Background(), "bench", sampleRow(1), time.Hour); err != nil {
				b.Fatal(err)
			}
			full := c.FullKey("bench")
			token := newLeaseToken()
			runGoroutines(b, g, func(ctx context.Context) error {
				data, err := rdb.SetArgs(ctx, full, token, redis.SetArgs{Mode: "NX", Get: true, TTL: 3 * time.Second}).Bytes()
				return decodeRawRow(data, err)
			})
		})
	}
}

// decodeRawRow is the decode half of the raw floor: the entry's codec bytes
// (after the header) into a row, checked.
func decodeRawRow(data []byte, err error) error {
	if err != nil {
		return err
	}
	var v row
	if err := json.Unmarshal(data[1:], &v); err != nil {
		return err
	}
	if v.UserID != 1 {
		return fmt.Errorf("got %+v", v)
	}
	return nil
}

// BenchmarkFetchNearHit is BenchmarkFetchHit with the key under the near
// tier: answered from memory while the tier has caught up with Redis
// (Stats.NearBypasses counts the reads that were not).
func BenchmarkFetchNearHit(b *testing.B) {
	for _, g := range benchGoroutines {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			c, _ := realCache(b, &Config{OpTimeout: time.Second})
			nearOn(b, c, nil)
			load := func(context.Context) (row, error) { return sampleRow(1), nil }
			ctx := ctxT(b, time.Minute)
			if _, err := nearHit(b, ctx, c, nearPrefix+"bench", time.Hour, load); err != nil {
				b.Fatal(err)
			}
			before := c.Stats()
			runGoroutines(b, g, func(ctx context.Context) error {
				v, err := Fetch(ctx, c, nearPrefix+"bench", time.Hour, load)
				if err == nil && v.UserID != 1 {
					err = fmt.Errorf("got %+v", v)
				}
				return err
			})
			b.StopTimer()
			st := c.Stats()
			if st.Loads != 1 || st.RedisErrors != 0 {
				b.Fatalf("not all hits: %+v", st)
			}
			if reads := float64(st.NearHits + st.NearBypasses + st.NearMisses - before.NearHits - before.NearBypasses - before.NearMisses); reads > 0 {
				b.ReportMetric(float64(st.NearHits-before.NearHits)/reads, "near-hit-ratio")
			}
		})
	}
}
