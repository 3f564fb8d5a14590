package cachelayer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

// RedisLog sends go-redis's own log lines to a [slog.Logger]. go-redis logs
// through one process-wide logger, stderr by default: a Redis that is down
// gives a "failed to dial" line about once a second per client, outside the
// Config.Logger of any Cache. A library must not change process globals,
// so neither [Open] nor [New] touches that logger; a service routes the
// lines to its own logger once, at start:
//
//	redis.SetLogger(cachelayer.RedisLogger(logger))
//
// (or silences them with logging.Disable from
// github.com/redis/go-redis/v9/logging). Each line is logged at Level with
// the attribute source=go-redis, after masking anything that looks like a
// password (a URL's userinfo, a password= setting); go-redis's dial errors
// name the address, which stays.
type RedisLog struct {
	Logger *slog.Logger // nil: slog.Default() at each line
	Level  slog.Level
}

// RedisLogger returns a RedisLog that logs go-redis's lines to l at
// [slog.LevelWarn] (go-redis logs failures). Pass it to redis.SetLogger.
func RedisLogger(l *slog.Logger) *RedisLog {
	return &RedisLog{Logger: l, Level: slog.LevelWarn}
}

// Printf implements go-redis's logging interface.
func (r *RedisLog) Printf(ctx context.Context, format string, v ...any) {
	l := r.Logger
	if l == nil {
		l = slog.Default()
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if !l.Enabled(ctx, r.Level) {
		return
	}
	msg := strings.TrimSpace(redact.Message(fmt.Sprintf(format, v...)))
	l.Log(ctx, r.Level, msg, "source", "go-redis")
}
