package ghlcache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ghl-agency/ghlcache"
	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func openRepos(t *testing.T, redisURL string) *ghlcache.Repos {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := ghlcache.Open(ctx, ghlcache.Config{DatabaseURL: testsvc.DatabaseURL(t), RedisURL: redisURL,
		Cache: &cachelayer.Config{Prefix: testsvc.Prefix(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// serve returns the handler's status code and decoded body.
func serve(t *testing.T, r *ghlcache.Repos) (int, ghlcache.Health) {
	t.Helper()
	rec := httptest.NewRecorder()
	r.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	var h ghlcache.Health
	if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	return rec.Code, h
}

// Up with both; degraded (still ready) with Redis unreachable or in
// no-cache mode; down (not ready, 503) without Postgres. Always within
// HealthTimeout, and never a password.
func TestHealth(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	up := openRepos(t, testsvc.RedisURL(t))
	if h := up.Health(ctx); h.Status != ghlcache.StatusUp || !h.Ready() || !h.Postgres.Healthy || !h.Redis.Healthy {
		t.Fatalf("both answer: %+v", h)
	}
	if code, h := serve(t, up); code != http.StatusOK || h.Status != ghlcache.StatusUp {
		t.Fatalf("handler: %d %+v", code, h)
	}

	closed := fmt.Sprintf("redis://:s3cret-pw@127.0.0.1:%d/0", testsvc.FreePort(t)) // nothing listens there
	for name, url := range map[string]string{"redis unreachable": closed, "no-cache mode": ""} {
		r := openRepos(t, url)
		start := time.Now()
		h := r.Health(ctx)
		if took := time.Since(start); took > ghlcache.HealthTimeout+500*time.Millisecond {
			t.Fatalf("%s: Health took %v", name, took)
		}
		if h.Status != ghlcache.StatusDegraded || !h.Ready() || !h.Postgres.Healthy || h.Redis.Healthy || h.Redis.Err == "" {
			t.Fatalf("%s: %+v", name, h)
		}
		if h.Redis.Disabled != (url == "") {
			t.Fatalf("%s: Disabled %v", name, h.Redis.Disabled)
		}
		if code, _ := serve(t, r); code != http.StatusOK {
			t.Fatalf("%s: handler %d, want 200 (degraded is ready)", name, code)
		}
		if strings.Contains(fmt.Sprintf("%+v", h), "s3cret") {
			t.Fatalf("%s: password in %+v", name, h)
		}
	}

	down := openRepos(t, testsvc.RedisURL(t))
	down.Pool.Close() // Postgres gone for this instance
	h := down.Health(ctx)
	if h.Status != ghlcache.StatusDown || h.Ready() || h.Postgres.Healthy || h.Postgres.Err == "" || !h.Redis.Healthy {
		t.Fatalf("without Postgres: %+v", h)
	}
	if code, h := serve(t, down); code != http.StatusServiceUnavailable || h.Status != ghlcache.StatusDown {
		t.Fatalf("handler without Postgres: %d %+v", code, h)
	}
}
