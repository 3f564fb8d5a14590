package cachelayer

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
)

func TestRedisLoggerMasksPasswords(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	rl := RedisLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	rl.Printf(context.Background(), "sentinel: addr=%s failed: %s", "redis://:Sec@ret1@127.0.0.1:1/0", "password = Secret1")
	rl.Printf(context.Background(), "redis: dial %s", "u:Secret1@127.0.0.1:1")
	out := buf.String()
	for _, s := range []string{"Secret1", "ret1"} {
		if strings.Contains(out, s) {
			t.Errorf("%q shows %q", out, s)
		}
	}
	if got := strings.Count(out, "level=WARN"); got != 2 || strings.Count(out, "source=go-redis") != 2 {
		t.Errorf("want 2 warnings from source=go-redis, got %q", out)
	}

	buf = syncBuffer{}
	rl.Level = slog.LevelDebug
	rl.Printf(context.Background(), "redis: %s", "quiet")
	if buf.String() != "" {
		t.Errorf("a level the handler does not enable was logged: %q", buf.String())
	}
}

// TestRedisLoggerRoutesDialFailures installs the adapter as go-redis's
// logger (a process global: not parallel, restored after) and checks that a
// failed dial reaches the slog.Logger instead of stderr.
func TestRedisLoggerRoutesDialFailures(t *testing.T) {
	var buf syncBuffer
	redis.SetLogger(RedisLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	t.Cleanup(logging.Enable) // go-redis's default logger again
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialerRetries: 1, MaxRetries: -1, Password: "Secret1"})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("ping of a closed port succeeded")
	}
	out := buf.String()
	if !strings.Contains(out, "failed to dial") || !strings.Contains(out, "source=go-redis") {
		t.Fatalf("go-redis's dial failure did not reach the logger: %q", out)
	}
	if strings.Contains(out, "Secret1") {
		t.Fatalf("%q shows the password", out)
	}
}
