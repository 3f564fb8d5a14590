// Package testenv gives every package's tests the real services they run
// against: a fresh, migrated Postgres database per test binary and a Redis
// key prefix per test.
//
// Services come from TEST_DATABASE_URL and TEST_REDIS_URL. When one is unset,
// the conventional local server is used if it answers (Postgres on
// 127.0.0.1:5432 as user postgres without a password, Redis on
// 127.0.0.1:6379); else, when a Docker engine answers, it is started with
// testcontainers-go. Otherwise the tests that need it skip with a message
// saying how to run them — unless REQUIRE_INTEGRATION=1 (as in CI), where a
// missing service is a failure.
//
// A package that uses [Pool] must route its TestMain through [Main], which
// drops the package's database (and stops any container) when the run ends:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
package testenv

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
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

var (
	mainMu      sync.Mutex
	mainRunning bool
	cleanups    []func(context.Context) error
)

// Main runs the tests of a package and then releases what testenv created for
// them (the package's database, containers). Call it from TestMain.
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
			fmt.Fprintf(os.Stderr, "testenv: cleanup: %v\n", err)
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
		t.Fatal("testenv: route TestMain through testenv.Main so shared resources are released")
	}
	cleanups = append(cleanups, fn)
}

var (
	dockerOnce sync.Once
	dockerErr  error
)

// dockerHealthy reports whether a Docker engine answers (what
// testcontainers' SkipIfProviderIsNotHealthy checks). It fails fast when none
// is installed.
func dockerHealthy(ctx context.Context) error {
	dockerOnce.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				dockerErr = fmt.Errorf("docker provider: %v", r)
			}
		}()
		p, err := testcontainers.NewDockerProvider()
		if err != nil {
			dockerErr = err
			return
		}
		defer p.Close()
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		dockerErr = p.Health(ctx)
	})
	return dockerErr
}
