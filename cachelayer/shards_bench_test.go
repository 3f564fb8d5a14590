package cachelayer

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// What routing a key to its master's breaker costs on every read, and what
// WAIT costs a delete:
//
//	go test -run '^$' -bench 'BreakerFor|DeleteWait' -benchmem ./cachelayer
//
// BreakerFor/cluster is the key's CRC16 slot and the per-slot memo of its
// master's breaker (ClusterClient.MasterForKey on a memo miss);
// BreakerFor/standalone the field read it replaces. No round trip either
// way.
func BenchmarkBreakerFor(b *testing.B) {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("ghl:credits:%d:enrichment", i)
	}
	b.Run("standalone", func(b *testing.B) {
		c, _ := realCache(b, nil)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_ = c.breakerFor(keys[i&1023]).allow()
			i++
		}
	})
	b.Run("cluster", func(b *testing.B) {
		cluster := testsvc.StartCluster(b, 3)
		c := cacheOn(b, cluster.Client(), nil)
		waitFor(b, 5*time.Second, "the slot table", func() bool { return c.shards.ready.Load() })
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_ = c.breakerFor(keys[i&1023]).allow()
			i++
		}
	})
}

// BenchmarkDeleteWait deletes one key (after a SET) on a primary with one
// replica, with and without WAIT for it: the same one round trip, longer by
// the replica's acknowledgement; cpu-ns/op is this process's CPU only.
func BenchmarkDeleteWait(b *testing.B) {
	primary := testsvc.StartRedis(b)
	testsvc.StartReplica(b, primary)
	rdb := primary.Client()
	for _, tc := range []struct {
		name     string
		replicas int
	}{{"wait", 0}, {"nowait", -1}} {
		b.Run(tc.name, func(b *testing.B) {
			c := cacheOn(b, rdb, &Config{InvalidateReplicas: tc.replicas})
			waitFor(b, 5*time.Second, "the replica", func() bool { return c.topo.replicasOf("") == 1 })
			ctx := context.Background()
			full := c.FullKey("k")
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				if err := rdb.Set(ctx, full, "v", time.Minute).Err(); err != nil {
					b.Fatal(err)
				}
				if err := c.DeleteFull(ctx, full); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the user+system CPU time of this process so far (not of
// the redis-servers).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFetchHitCluster is a Fetch hit on a 3-master cluster, to set the
// per-key breaker routing (two BreakerFor per hit) against a whole hit.
func BenchmarkFetchHitCluster(b *testing.B) {
	cluster := testsvc.StartCluster(b, 3)
	c := cacheOn(b, cluster.Client(), &Config{OpTimeout: time.Second})
	waitFor(b, 5*time.Second, "the slot table", func() bool { return c.shards.ready.Load() })
	load := func(context.Context) (row, error) { return sampleRow(1), nil }
	ctx := context.Background()
	if _, err := Fetch(ctx, c, "bench", time.Hour, load); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Fetch(ctx, c, "bench", time.Hour, load); err != nil {
			b.Fatal(err)
		}
	}
}
