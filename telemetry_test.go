package ghlcache_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/ghl-agency/ghlcache"
	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// countHook counts the commands a go-redis client sends.
type countHook struct{ cmds atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.cmds.Add(1); return next(ctx, cmd) }
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// Open hands the client it built to ConfigureRedis (where redisotel's
// hooks go) before the repositories use it, fails with ConfigureRedis's
// error, and passes its providers to the cache unless Cache sets its own.
func TestOpenTelemetryOptions(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hook := &countHook{}
	mp, tp := noop.NewMeterProvider(), tracenoop.NewTracerProvider()
	r, err := ghlcache.Open(ctx, ghlcache.Config{
		DatabaseURL: testsvc.DatabaseURL(t), RedisURL: testsvc.RedisURL(t),
		Cache:         &cachelayer.Config{Prefix: testsvc.Prefix(t)},
		MeterProvider: mp, TracerProvider: tp,
		ConfigureRedis: func(rdb redis.UniversalClient) error { rdb.AddHook(hook); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	if r.Cache.MeterProvider() != mp {
		t.Error("the cache did not get Config.MeterProvider")
	}
	before := hook.cmds.Load()
	if _, err := r.Credits.Balance(ctx, testsvc.NewID(), credits.Type("main")); err != nil {
		t.Fatal(err)
	}
	if hook.cmds.Load() == before {
		t.Error("the hook installed by ConfigureRedis saw no command of a read")
	}

	boom := errors.New("boom")
	_, err = ghlcache.Open(ctx, ghlcache.Config{
		DatabaseURL: testsvc.DatabaseURL(t), RedisURL: testsvc.RedisURL(t),
		Cache:          &cachelayer.Config{Prefix: testsvc.Prefix(t)},
		ConfigureRedis: func(redis.UniversalClient) error { return boom },
	})
	if !errors.Is(err, boom) {
		t.Errorf("Open with a failing ConfigureRedis = %v, want it wrapped", err)
	}
}
