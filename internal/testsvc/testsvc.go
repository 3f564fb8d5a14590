// Package testsvc gives the library's package tests the real services they
// run against: a fresh, migrated Postgres database per test binary and a
// Redis key prefix per test. It imports no container library, so a program
// that imports ghlcache does not inherit one.
//
// Services come from TEST_DATABASE_URL and TEST_REDIS_URL. When one is unset,
// the conventional local server is used if it answers
// (internal/localservices: Postgres on 127.0.0.1:5432 as user postgres
// without a password, Redis on 127.0.0.1:6379); else a fallback installed
// with [SetFallbacks] (integration_test/testenv installs one that starts
// containers with testcontainers-go). Otherwise the tests that need it skip
// with a message saying how to run them — unless REQUIRE_INTEGRATION=1 (as in
// CI), where a missing service is a failure.
//
// A package that uses [Pool] must route its TestMain through [Main], which
// drops the package's database (and stops anything a fallback started) when
// the run ends:
//
//	func TestMain(m *testing.M) { os.Exit(testsvc.Main(m)) }
package testsvc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// Required reports whether integration services are mandatory for this run
// (REQUIRE_INTEGRATION=1): a missing service then fails the test instead of
// skipping it.
func Required() bool { return os.Getenv("REQUIRE_INTEGRATION") == "1" }

// unavailable skips (or, when Required, fails) t because service cannot be
// reached, saying how to provide it.
func unavailable(t testing.TB, service, envVar string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s unavailable: %v (set %s, or run a Docker engine for testcontainers-go)", service, err, envVar)
	if Required() {
		t.Fatalf("REQUIRE_INTEGRATION=1: %s", msg)
	}
	t.Skip(msg)
}

// Fallback starts a service when neither its TEST_*_URL variable nor the
// local server provides one. It returns the service's URL and a function
// that stops it, which [Main] calls when the run ends.
type Fallback func(ctx context.Context) (url string, stop func(context.Context) error, err error)

var (
	fallbackMu       sync.Mutex
	postgresFallback Fallback
	redisFallback    Fallback
)

// SetFallbacks installs the functions that start Postgres and Redis when
// neither TEST_DATABASE_URL/TEST_REDIS_URL nor the local servers answer. Call
// it before the tests run (from TestMain). Either may be nil.
func SetFallbacks(postgres, redis Fallback) {
	fallbackMu.Lock()
	defer fallbackMu.Unlock()
	postgresFallback, redisFallback = postgres, redis
}

// service resolves one shared test service once per test binary: its
// TEST_*_URL variable, else the local server if it answers, else the
// fallback installed by [SetFallbacks].
type service struct {
	name, envVar, localURL string
	answers                func(context.Context) bool
	fallback               func() Fallback // read under fallbackMu

	once sync.Once
	url  string
	err  error
}

// resolve returns the service's URL, or skips (fails, when Required) t.
func (s *service) resolve(t testing.TB) string {
	t.Helper()
	s.once.Do(func() {
		if u := os.Getenv(s.envVar); u != "" {
			s.url = u
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if s.answers(ctx) {
			s.url = s.localURL
			return
		}
		fallbackMu.Lock()
		fb := s.fallback()
		fallbackMu.Unlock()
		s.url, s.err = runFallback(ctx, t, fb, s.envVar)
	})
	if s.err != nil {
		unavailable(t, s.name, s.envVar, s.err)
	}
	return s.url
}

// errNoFallback is what a missing service reports when no fallback is
// installed.
var errNoFallback = errors.New("no local server answers")

// runFallback starts service with fb (nil: errNoFallback) and registers its
// stop function with Main.
func runFallback(ctx context.Context, t testing.TB, fb Fallback, envVar string) (string, error) {
	t.Helper()
	if fb == nil {
		return "", fmt.Errorf("%s unset and %w", envVar, errNoFallback)
	}
	u, stop, err := fb(ctx)
	if err != nil {
		return "", fmt.Errorf("%s unset: %w", envVar, err)
	}
	if stop != nil {
		atExit(t, stop)
	}
	return u, nil
}

var (
	mainMu      sync.Mutex
	mainRunning bool
	cleanups    []func(context.Context) error
)

// Main runs the tests of a package and then releases what testsvc created for
// them (the package's database, anything a fallback started). Call it from
// TestMain.
func Main(m *testing.M) int {
	mainMu.Lock()
	mainRunning = true
	mainMu.Unlock()

	code := m.Run()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mainMu.Lock()
	fns := cleanups
	cleanups = nil
	mainMu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		if err := fns[i](ctx); err != nil {
			fmt.Fprintf(os.Stderr, "testsvc: cleanup: %v\n", err)
		}
	}
	return code
}

// atExit registers fn to run when Main returns. It fails t when the package
// does not use Main, since nothing would then release the resource.
func atExit(t testing.TB, fn func(context.Context) error) {
	t.Helper()
	mainMu.Lock()
	defer mainMu.Unlock()
	if !mainRunning {
		_ = fn(context.Background())
		t.Fatal("testsvc: route TestMain through testsvc.Main so shared resources are released")
	}
	cleanups = append(cleanups, fn)
}
