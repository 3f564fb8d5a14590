package bench

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// RedisCounter is a go-redis hook that counts the commands a client sends
// and its round trips: a command on its own is one, a pipeline (or a
// MULTI/EXEC transaction) of any length is one. Add it to every client of a
// system (Client.AddHook); one counter may serve several clients.
type RedisCounter struct {
	commands, roundTrips atomic.Int64
}

var _ redis.Hook = (*RedisCounter)(nil)

// RedisCounts is a snapshot of a RedisCounter.
type RedisCounts struct {
	Commands   int64 `json:"commands"`
	RoundTrips int64 `json:"round_trips"`
}

// Sub returns c - o.
func (c RedisCounts) Sub(o RedisCounts) RedisCounts {
	return RedisCounts{Commands: c.Commands - o.Commands, RoundTrips: c.RoundTrips - o.RoundTrips}
}

// Counts returns the counts so far (zero for a nil counter).
func (r *RedisCounter) Counts() RedisCounts {
	if r == nil {
		return RedisCounts{}
	}
	return RedisCounts{Commands: r.commands.Load(), RoundTrips: r.roundTrips.Load()}
}

// DialHook implements redis.Hook.
func (r *RedisCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook implements redis.Hook.
func (r *RedisCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.commands.Add(1)
		r.roundTrips.Add(1)
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook implements redis.Hook.
func (r *RedisCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.commands.Add(int64(len(cmds)))
		r.roundTrips.Add(1)
		return next(ctx, cmds)
	}
}
