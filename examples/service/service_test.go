package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

func TestMain(m *testing.M) { os.Exit(testsvc.Main(m)) }

// testTimeout bounds every test.
const testTimeout = 60 * time.Second

// testEnv is the environment of a server on the test services: this test
// binary's migrated database, the test Redis under a prefix of t's own, any
// free port, and a rate limit no test reaches unless it sets its own.
func testEnv(t *testing.T) map[string]string {
	t.Helper()
	return map[string]string{
		"DATABASE_URL": testsvc.DatabaseURL(t),
		"REDIS_URL":    testsvc.RedisURL(t),
		"CACHE_PREFIX": testsvc.Prefix(t),
		"ADDR":         "127.0.0.1:0",
		"RATE_LIMIT":   "10000",
		"MIGRATE":      "false", // testsvc migrated it
	}
}

// testContext returns a context that ends after testTimeout or when t's
// cleanups have run (the servers' included: they shut down first).
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func lookup(env map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) { v, ok := env[name]; return v, ok }
}

// testServer is a server started in-process by startServer.
type testServer struct {
	t    *testing.T
	ctx  context.Context // the test's deadline
	base string          // http://127.0.0.1:port
}

// startServer runs the service with env (and h, for the tests that order
// events) until t ends, and checks that it then shuts down cleanly. ctx
// bounds the server and the requests.
func startServer(ctx context.Context, t *testing.T, env map[string]string, h hooks) *testServer {
	t.Helper()
	cfg, err := loadConfig(lookup(env))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	cfg.hooks = h
	runCtx, stop := context.WithCancel(ctx)
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(runCtx, cfg, t.Output(), ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		stop()
		t.Fatalf("serve returned before listening: %v", err)
	case <-ctx.Done():
		stop()
		t.Fatal("server not listening before the deadline")
	}
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-ctx.Done():
			t.Error("server not stopped before the deadline")
		}
	})
	return &testServer{t: t, ctx: ctx, base: "http://" + addr}
}

// do sends a request (body: nil, a string, or a value sent as JSON) with
// the headers given as name, value pairs, and returns the status, the
// headers and the body.
func (s *testServer) do(method, path string, body any, headers ...string) (int, http.Header, []byte) {
	s.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			s.t.Fatal(err)
		}
		r = bytes.NewReader(js)
	}
	req, err := http.NewRequestWithContext(s.ctx, method, s.base+path, r)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, out
}

// want sends a request like do and fails unless it answers status; it
// decodes the JSON body into dst when dst is not nil.
func (s *testServer) want(status int, dst any, method, path string, body any, headers ...string) {
	s.t.Helper()
	got, _, out := s.do(method, path, body, headers...)
	if got != status {
		s.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, got, status, out)
	}
	if dst != nil {
		if err := json.Unmarshal(out, dst); err != nil {
			s.t.Fatalf("%s %s: decode %s: %v", method, path, out, err)
		}
	}
}

// wantError is want for an error answer: {"error": "…"} containing substr.
func (s *testServer) wantError(status int, substr, method, path string, body any, headers ...string) {
	s.t.Helper()
	var e struct{ Error string }
	s.want(status, &e, method, path, body, headers...)
	if e.Error == "" || !strings.Contains(e.Error, substr) {
		s.t.Fatalf("%s %s: error %q, want one containing %q", method, path, e.Error, substr)
	}
}

func userPath(id int64, rest string) string {
	return "/users/" + strconv.FormatInt(id, 10) + "/balances/enrichment" + rest
}

func TestBalances(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := startServer(ctx, t, testEnv(t), hooks{})
	user := testsvc.NewID()

	var b balanceJSON
	s.want(http.StatusOK, &b, "GET", userPath(user, ""), nil)
	if b != (balanceJSON{UserID: user, Type: "enrichment"}) {
		t.Fatalf("new user: %+v, want amount 0, version 0", b)
	}

	s.want(http.StatusOK, &b, "POST", userPath(user, "/add"), changeJSON{Amount: 100, Reason: "top-up"}, "Idempotency-Key", "add-1")
	if b.Amount != 100 || b.Version != 1 || b.UpdatedAt.IsZero() {
		t.Fatalf("after add: %+v, want amount 100, version 1", b)
	}
	s.want(http.StatusOK, &b, "GET", userPath(user, ""), nil)
	if b.Amount != 100 || b.Version != 1 {
		t.Fatalf("read after add: %+v, want amount 100, version 1", b)
	}

	var first, replay balanceJSON
	s.want(http.StatusOK, &first, "POST", userPath(user, "/deduct"), changeJSON{Amount: 30, Reason: "enrich"}, "Idempotency-Key", "deduct-1")
	if first.Amount != 70 || first.Version != 2 {
		t.Fatalf("after deduct: %+v, want amount 70, version 2", first)
	}
	s.want(http.StatusOK, &replay, "POST", userPath(user, "/deduct"), changeJSON{Amount: 30, Reason: "enrich"}, "Idempotency-Key", "deduct-1")
	if replay != first {
		t.Fatalf("replay: %+v, want the first result %+v", replay, first)
	}
	s.want(http.StatusOK, &b, "GET", userPath(user, ""), nil)
	if b.Amount != 70 || b.Version != 2 {
		t.Fatalf("read after replay: %+v, want amount 70 (deducted once), version 2", b)
	}

	s.wantError(http.StatusConflict, "insufficient", "POST", userPath(user, "/deduct"), changeJSON{Amount: 71}, "Idempotency-Key", "deduct-2")
	s.wantError(http.StatusUnprocessableEntity, "idempotency", "POST", userPath(user, "/deduct"), changeJSON{Amount: 5}, "Idempotency-Key", "deduct-1")
	s.wantError(http.StatusBadRequest, "Idempotency-Key", "POST", userPath(user, "/deduct"), changeJSON{Amount: 1})
	s.wantError(http.StatusBadRequest, "amount", "POST", userPath(user, "/add"), changeJSON{Amount: 0}, "Idempotency-Key", "add-0")
	s.wantError(http.StatusBadRequest, "JSON", "POST", userPath(user, "/add"), `{"amount": "ten"}`, "Idempotency-Key", "add-2")
	s.wantError(http.StatusBadRequest, "JSON", "POST", userPath(user, "/add"), `{"amount": 1, "extra": true}`, "Idempotency-Key", "add-3")
	for _, id := range []string{"abc", "0", "-1", "99999999999999999999"} {
		s.wantError(http.StatusBadRequest, "user id", "GET", "/users/"+id+"/balances/enrichment", nil)
	}
	s.wantError(http.StatusBadRequest, "credit type", "GET", "/users/1/balances/Not-A-Type", nil)

	s.want(http.StatusOK, &b, "GET", userPath(user, ""), nil)
	if b.Amount != 70 || b.Version != 2 {
		t.Fatalf("after the refused changes: %+v, want amount 70, version 2", b)
	}
}

func TestWorkflows(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := startServer(ctx, t, testEnv(t), hooks{})

	var created definitionJSON
	s.want(http.StatusCreated, &created, "POST", "/workflows", `{"name": "onboarding", "spec": {"steps": ["email", "wait"]}}`)
	if created.ID <= 0 || created.Version != 1 || string(created.Spec) != `{"steps":["email","wait"]}` {
		t.Fatalf("created: %+v", created)
	}
	path := "/workflows/" + strconv.FormatInt(created.ID, 10)

	var got definitionJSON
	s.want(http.StatusOK, &got, "GET", path, nil)
	if !got.UpdatedAt.Equal(created.UpdatedAt) || got.ID != created.ID || got.Name != created.Name || got.Version != 1 || !bytes.Equal(got.Spec, created.Spec) {
		t.Fatalf("read: %+v, want %+v", got, created)
	}

	var updated definitionJSON
	s.want(http.StatusOK, &updated, "PUT", path, definitionJSON{Name: "onboarding v2", Version: 1, Spec: json.RawMessage(`{"steps": ["email"]}`)})
	if updated.Version != 2 || updated.Name != "onboarding v2" || string(updated.Spec) != `{"steps":["email"]}` {
		t.Fatalf("updated: %+v", updated)
	}
	s.want(http.StatusOK, &got, "GET", path, nil)
	if got.Version != 2 || got.Name != "onboarding v2" {
		t.Fatalf("read after update: %+v, want version 2", got)
	}

	s.wantError(http.StatusConflict, "conflict", "PUT", path, definitionJSON{Name: "stale", Version: 1, Spec: json.RawMessage(`{}`)})
	s.wantError(http.StatusBadRequest, "spec", "PUT", path, definitionJSON{Name: "x", Version: 2, Spec: json.RawMessage(`[1]`)})
	s.wantError(http.StatusBadRequest, "differs", "PUT", path, definitionJSON{ID: created.ID + 1, Name: "x", Version: 2, Spec: json.RawMessage(`{}`)})

	missing := "/workflows/" + strconv.FormatInt(1<<62+testsvc.NewID(), 10)
	s.wantError(http.StatusNotFound, "not found", "GET", missing, nil)
	s.wantError(http.StatusNotFound, "not found", "PUT", missing, definitionJSON{Name: "x", Version: 1, Spec: json.RawMessage(`{}`)})
	s.wantError(http.StatusBadRequest, "workflow id", "GET", "/workflows/x", nil)
	s.wantError(http.StatusBadRequest, "workflow id", "GET", "/workflows/0", nil)
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	env := testEnv(t)
	env["RATE_LIMIT"], env["RATE_WINDOW"] = "5", "1h"
	s := startServer(ctx, t, env, hooks{})
	user, other := testsvc.NewID(), testsvc.NewID()

	for i := range 5 {
		if status, _, body := s.do("GET", userPath(user, ""), nil); status != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200; body %s", i+1, status, body)
		}
	}
	status, header, body := s.do("GET", userPath(user, ""), nil)
	if status != http.StatusTooManyRequests {
		t.Fatalf("request 6: status %d, want 429; body %s", status, body)
	}
	retry, err := strconv.Atoi(header.Get("Retry-After"))
	if err != nil || retry < 1 || retry > 3600 {
		t.Fatalf("Retry-After %q, want 1..3600 seconds", header.Get("Retry-After"))
	}
	// Every per-user route shares the user's budget.
	s.wantError(http.StatusTooManyRequests, "rate limit", "POST", userPath(user, "/add"), changeJSON{Amount: 1}, "Idempotency-Key", "k")
	// Another user has a budget of its own; other routes are not limited.
	s.want(http.StatusOK, nil, "GET", userPath(other, ""), nil)
	s.want(http.StatusOK, nil, "GET", "/healthz", nil)
}

func TestProbes(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := startServer(ctx, t, testEnv(t), hooks{})

	s.want(http.StatusOK, nil, "GET", "/healthz", nil)
	var h struct {
		Status   string
		Postgres struct{ Healthy bool }
		Redis    struct{ Healthy bool }
	}
	s.want(http.StatusOK, &h, "GET", "/readyz", nil)
	if h.Status != "up" || !h.Postgres.Healthy || !h.Redis.Healthy {
		t.Fatalf("readyz: %+v, want up with both healthy", h)
	}
}

// TestNoCacheMode: REDIS_URL set but empty runs without Redis; the rate
// limit then fails open and readiness says degraded.
func TestNoCacheMode(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	env := testEnv(t)
	env["REDIS_URL"], env["RATE_LIMIT"], env["RATE_WINDOW"] = "", "1", "1h"
	s := startServer(ctx, t, env, hooks{})
	user := testsvc.NewID()

	for range 3 {
		s.want(http.StatusOK, nil, "GET", userPath(user, ""), nil)
	}
	var h struct{ Status string }
	s.want(http.StatusOK, &h, "GET", "/readyz", nil)
	if h.Status != "degraded" {
		t.Fatalf("readyz status %q, want degraded", h.Status)
	}
}

// TestMetrics expects the library's own series after some traffic: the
// cache's request counter and the outbox depth gauge.
func TestMetrics(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	// A database of its own: the other tests' changes would otherwise
	// reach this server's outbox too (the tables' triggers write a row for
	// every live namespace), and its invalidations and depths would count
	// them.
	env := testEnv(t)
	env["DATABASE_URL"] = testsvc.IsolatedDatabaseURL(t)
	s := startServer(ctx, t, env, hooks{})
	user := testsvc.NewID()

	s.want(http.StatusOK, nil, "POST", userPath(user, "/add"), changeJSON{Amount: 10}, "Idempotency-Key", "m-1")
	for range 3 { // a miss, then hits
		s.want(http.StatusOK, nil, "GET", userPath(user, ""), nil)
	}
	status, header, body := s.do("GET", "/metrics", nil)
	if status != http.StatusOK {
		t.Fatalf("metrics: status %d; body %s", status, body)
	}
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("metrics: Content-Type %q, want text/plain", ct)
	}
	// The exact values of this server's own cache (a key prefix of its
	// own): one miss, two hits, one load, the add's invalidation, and an
	// empty outbox once the add's row is done.
	for series, want := range map[string]string{
		`ghlcache_cache_requests_total{ghlcache_domain="credits",ghlcache_outcome="miss"`:              "1",
		`ghlcache_cache_requests_total{ghlcache_domain="credits",ghlcache_outcome="hit"`:               "2",
		`ghlcache_cache_loads_total{ghlcache_domain="credits"`:                                         "1",
		`ghlcache_cache_invalidations_total{ghlcache_domain="credits"`:                                 "1",
		`ghlcache_cache_fetch_duration_seconds_count{ghlcache_domain="credits",ghlcache_outcome="hit"`: "2",
		`ghlcache_cache_breakers_open{`:                                                                "0",
		`ghlcache_outbox_depth{ghlcache_domain="workflows"`:                                            "0",
	} {
		if got, ok := seriesValue(body, series); !ok || got != want {
			t.Errorf("metrics: %s… = %q (found %v), want %s; body:\n%s", series, got, ok, want, body)
		}
	}
}

// seriesValue returns the value of the first line of a Prometheus text
// body that starts with prefix (a series name and some of its labels).
func seriesValue(body []byte, prefix string) (string, bool) {
	for line := range bytes.Lines(body) {
		if bytes.HasPrefix(line, []byte(prefix)) {
			f := bytes.Fields(line)
			return string(f[len(f)-1]), true
		}
	}
	return "", false
}

// TestGracefulShutdown holds a request in its handler, cancels the run
// context, and checks that the server stops accepting, lets the request
// finish with its answer, and returns nil.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	cfg, err := loadConfig(lookup(testEnv(t)))
	if err != nil {
		t.Fatal(err)
	}
	entered, release, shuttingDown := make(chan struct{}), make(chan struct{}), make(chan struct{})
	cfg.hooks = hooks{
		wrap: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Test-Hold") != "" {
					close(entered)
					<-release
				}
				next.ServeHTTP(w, r)
			})
		},
		onShutdown: func() { close(shuttingDown) },
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	ready, done := make(chan string, 1), make(chan error, 1)
	go func() { done <- serve(runCtx, cfg, t.Output(), ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-ctx.Done():
		t.Fatal("server not listening before the deadline")
	}
	s := &testServer{t: t, ctx: ctx, base: "http://" + addr}

	type answer struct {
		status int
		body   []byte
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, "GET", s.base+userPath(testsvc.NewID(), ""), nil)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		req.Header.Set("X-Test-Hold", "1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, body, err}
	}()

	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("request not in its handler before the deadline")
	}
	stop() // SIGTERM
	select {
	case <-shuttingDown:
	case <-ctx.Done():
		t.Fatal("shutdown not started before the deadline")
	}
	select {
	case err := <-done:
		t.Fatalf("serve returned with a request in flight: %v", err)
	default:
	}
	close(release)

	select {
	case a := <-answered:
		if a.err != nil || a.status != http.StatusOK {
			t.Fatalf("in-flight request: status %d, err %v, body %s; want 200", a.status, a.err, a.body)
		}
	case <-ctx.Done():
		t.Fatal("in-flight request not answered before the deadline")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("serve not returned before the deadline")
	}
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(lookup(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		databaseURL: "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
		redisURL:    "redis://127.0.0.1:6379/0",
		addr:        defaultAddr, rateLimit: defaultRateLimit, rateWindow: defaultRateWindow,
		shutdownTimeout: defaultShutdownTimeout, migrate: true,
	}
	if cfg.databaseURL != want.databaseURL || cfg.redisURL != want.redisURL || cfg.addr != want.addr ||
		cfg.rateLimit != want.rateLimit || cfg.rateWindow != want.rateWindow ||
		cfg.shutdownTimeout != want.shutdownTimeout || cfg.migrate != want.migrate || cfg.cachePrefix != "" {
		t.Fatalf("defaults: %+v, want %+v", cfg, want)
	}

	cfg, err = loadConfig(lookup(map[string]string{"REDIS_URL": "", "RATE_LIMIT": "0", "RATE_WINDOW": "1m", "MIGRATE": "false", "SHUTDOWN_TIMEOUT": "2s"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.redisURL != "" || cfg.rateLimit != 0 || cfg.rateWindow != time.Minute || cfg.migrate || cfg.shutdownTimeout != 2*time.Second {
		t.Fatalf("set: %+v", cfg)
	}

	for name, value := range map[string]string{
		"RATE_LIMIT": "-1", "RATE_WINDOW": "1", "SHUTDOWN_TIMEOUT": "0s", "MIGRATE": "maybe", "ADDR": "8080",
	} {
		_, err := loadConfig(lookup(map[string]string{name: value}))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: error %v, want one naming %s", name, value, err, name)
		}
	}
	if _, err := loadConfig(lookup(map[string]string{"RATE_WINDOW": "100us"})); err == nil {
		t.Error("RATE_WINDOW=100us: no error, want one (the window is in milliseconds)")
	}
}

// TestRunNeverPrintsPassword: a database that cannot be reached fails the
// start with an error that names it without its password.
func TestRunNeverPrintsPassword(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var out bytes.Buffer
	env := map[string]string{"DATABASE_URL": "postgres://app:s3cr3t-pw@127.0.0.1:1/app?sslmode=disable", "REDIS_URL": ""}
	err := run(ctx, lookup(env), &out, nil)
	if err == nil {
		t.Fatal("run: nil error with an unreachable database")
	}
	if strings.Contains(err.Error()+out.String(), "s3cr3t-pw") {
		t.Fatalf("password printed: error %q, output %q", err, out.String())
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("error %q does not name the database", err)
	}
}
