package cachelayer

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestMain(m *testing.M) {
	code := testsvc.Main(m)
	if code == 0 {
		// No goroutine may outlive the tests: flights, Health probes and
		// fills all end by Close. go-redis's own dial prober sleeps up to 1 s
		// after its client is closed.
		if err := goleak.Find(goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// row is a value of the size of a typical cached database row (~100 bytes
// of JSON).
type row struct {
	UserID    int64     `json:"user_id"`
	Type      string    `json:"type"`
	Amount    int64     `json:"amount"`
	Version   int64     `json:"version"`
	UpdatedAt time.Time `json:"updated_at"`
}

func sampleRow(n int64) row {
	return row{UserID: n, Type: "enrichment", Amount: 1000 + n, Version: 3,
		UpdatedAt: time.Date(2026, 11, 3, 10, 4, 5, 0, time.UTC)}
}

// realCache returns a Cache on the shared test Redis with a key prefix of
// t's own (keys deleted when t ends), closed when t ends. cfg may be nil.
func realCache(t testing.TB, cfg *Config) (*Cache, *redis.Client) {
	t.Helper()
	rdb := testsvc.Redis(t)
	return cacheOn(t, rdb, cfg), rdb
}

// cacheOn returns a Cache on rdb with t's prefix unless cfg sets one.
func cacheOn(t testing.TB, rdb redis.UniversalClient, cfg *Config) *Cache {
	t.Helper()
	var conf Config
	if cfg != nil {
		conf = *cfg
	}
	if conf.Prefix == "" {
		conf.Prefix = testsvc.Prefix(t)
	}
	c := New(rdb, &conf)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ctxT returns a context that ends with a deadline well inside the test's.
func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// counter counts calls of a loader.
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) inc() int { c.mu.Lock(); defer c.mu.Unlock(); c.n++; return c.n }
func (c *counter) get() int { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

// waitFor polls cond every 5 ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// release is a channel a blocked loader waits on, closed by do or, at the
// latest, when the test ends (so a failed test does not hang in Close).
type release struct {
	ch   chan struct{}
	once sync.Once
}

func (r *release) do() { r.once.Do(func() { close(r.ch) }) }

func releaser(t testing.TB) *release {
	r := &release{ch: make(chan struct{})}
	t.Cleanup(r.do)
	return r
}

// logBuffer collects what a logger writes.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

func redisClient(opts *redis.Options) *redis.Client { return redis.NewClient(opts) }

func containsStr(s, sub string) bool { return strings.Contains(s, sub) }

// fetchAsync runs Fetch of key with ttl one minute on a goroutine of its own
// and delivers its value (an error fails t).
func fetchAsync(ctx context.Context, t testing.TB, c *Cache, key string, load func(context.Context) (row, error)) <-chan row {
	ch := make(chan row, 1)
	go func() {
		v, err := Fetch(ctx, c, key, time.Minute, load)
		if err != nil {
			t.Error(err)
		}
		ch <- v
	}()
	return ch
}

// requireHolds fails t unless Redis holds want under key.
func requireHolds(ctx context.Context, t testing.TB, c *Cache, key string, want row, what string) {
	t.Helper()
	var got row
	if found, err := c.Get(ctx, key, &got); err != nil || !found || got != want {
		t.Fatalf("%s: Redis holds %+v (found %v, %v), want %+v", what, got, found, err, want)
	}
}
