package testsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/localservices"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

var (
	pgOnce sync.Once
	pgURL  string // URL of this test binary's own migrated database
	pgPool *pgxpool.Pool
	pgErr  error
)

// DatabaseURL returns the URL of this test binary's own database: created
// fresh, migrated, and dropped by [Main] when the run ends.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	setupPostgres(t)
	return pgURL
}

// Pool returns a pool on this test binary's database, shared by its tests.
// Tests isolate themselves by fresh ids (see [NewID]).
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	setupPostgres(t)
	return pgPool
}

// NewPool returns a pool of its own on this test binary's database, closed
// when t ends; configure may set a tracer, a size, etc. Use it where a test
// needs separate instances or counts queries.
func NewPool(t testing.TB, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	return NewPoolOn(t, DatabaseURL(t), configure)
}

// NewPoolThrough is NewPool with every connection made through a Proxy to
// this test binary's Postgres server, which it starts and returns: a test
// can then cut the pool off (Block) or lose one reply (LoseReply, see
// LostReplyTracer) while other pools keep working.
func NewPoolThrough(t testing.TB, configure func(*pgxpool.Config)) (*pgxpool.Pool, *Proxy) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(DatabaseURL(t))
	if err != nil {
		t.Fatalf("testsvc: parse database url: %v", err)
	}
	proxy := StartProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	host, port, err := net.SplitHostPort(proxy.Addr)
	if err != nil {
		t.Fatalf("testsvc: proxy address: %v", err)
	}
	portNum, _ := strconv.Atoi(port)
	pool := NewPool(t, func(c *pgxpool.Config) {
		c.ConnConfig.Host, c.ConnConfig.Port = host, uint16(portNum)
		c.ConnConfig.Fallbacks = nil // no way around the proxy
		if configure != nil {
			configure(c)
		}
	})
	return pool, proxy
}

// NewDatabase creates another fresh, unmigrated database on the same server,
// dropped when t ends, and returns its URL (for migration tests).
func NewDatabase(t testing.TB) string {
	t.Helper()
	base := baseDatabaseURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, drop, err := createDatabase(ctx, base)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	dropAtCleanup(t, drop)
	return u
}

// postgres is the server test databases are created on.
var postgres = &service{
	name: "Postgres", envVar: "TEST_DATABASE_URL", localURL: localservices.DatabaseURL,
	answers: localPostgresAnswers, fallback: func() Fallback { return postgresFallback },
}

// baseDatabaseURL returns a URL of the Postgres server to create test
// databases on: TEST_DATABASE_URL, else the local server if it answers
// (localservices.DatabaseURL), else the fallback of [SetFallbacks].
func baseDatabaseURL(t testing.TB) string {
	t.Helper()
	return postgres.resolve(t)
}

func setupPostgres(t testing.TB) {
	t.Helper()
	base := baseDatabaseURL(t)
	pgOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		u, drop, err := createDatabase(ctx, base)
		if err != nil {
			pgErr = err
			return
		}
		pool, err := pgxpool.New(ctx, u)
		if err != nil {
			_ = drop(ctx)
			pgErr = fmt.Errorf("connect test database: %w", err)
			return
		}
		atExit(t, func(ctx context.Context) error { pool.Close(); return drop(ctx) })
		if err := db.Migrate(ctx, pool); err != nil {
			pgErr = err
			return
		}
		pgURL, pgPool = u, pool
	})
	if pgErr != nil {
		t.Fatalf("testsvc: postgres: %v", pgErr)
	}
}

func localPostgresAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, localservices.DatabaseURL)
	if err != nil {
		return false
	}
	_ = conn.Close(ctx)
	return true
}

// createDatabase creates a uniquely named database on the server of base and
// returns its URL and a function that drops it.
func createDatabase(ctx context.Context, base string) (string, func(context.Context) error, error) {
	return createDatabaseFrom(ctx, base, "")
}

// createDatabaseFrom is createDatabase with a template database ("": the
// server's default).
func createDatabaseFrom(ctx context.Context, base, template string) (string, func(context.Context) error, error) {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return "", nil, fmt.Errorf("connect %s: %w", redact.URL(base), err)
	}
	defer conn.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("ghlcache_test_%d_%s", os.Getpid(), hex.EncodeToString(b[:]))
	create := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		create += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if _, err := conn.Exec(ctx, create); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", nil, fmt.Errorf("parse %s: %w", redact.URL(base), err)
	}
	u.Path = "/" + name
	drop := func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			return fmt.Errorf("drop %s: %w", name, err)
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		return err
	}
	return u.String(), drop, nil
}

var idSeq atomic.Int64

// NewID returns an id no other test in this test binary uses (each binary has
// its own database). Tests isolate rows, such as user ids, with it.
func NewID() int64 {
	idSeq.CompareAndSwap(0, time.Now().UnixNano()/1000%1_000_000_000)
	return idSeq.Add(1)
}

var (
	tplOnce sync.Once
	tplName string // a migrated database no one connects to, copied by IsolatedDatabaseURL
	tplErr  error
)

// IsolatedDatabaseURL returns the URL of a fresh migrated database of t's
// own, dropped when t ends: a copy of a template migrated once per test
// binary. It is for tests that count every statement, sweep or outbox row
// of a domain, which the cached repositories of other tests in the binary
// would disturb: their namespaces get rows from every write, and their
// sweepers wake on every notification.
func IsolatedDatabaseURL(t testing.TB) string {
	t.Helper()
	base := baseDatabaseURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tplOnce.Do(func() {
		u, drop, err := createDatabase(ctx, base)
		if err != nil {
			tplErr = err
			return
		}
		atExit(t, drop)
		pool, err := pgxpool.New(ctx, u)
		if err != nil {
			tplErr = fmt.Errorf("connect template database: %w", err)
			return
		}
		defer pool.Close() // a template must have no connections to be copied
		if err := db.Migrate(ctx, pool); err != nil {
			tplErr = err
			return
		}
		pu, err := url.Parse(u)
		if err != nil {
			tplErr = err
			return
		}
		tplName = pu.Path[1:]
	})
	if tplErr != nil {
		t.Fatalf("testsvc: template database: %v", tplErr)
	}
	u, drop, err := createDatabaseFrom(ctx, base, tplName)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	dropAtCleanup(t, drop)
	return u
}

// NewPoolOn is NewPool on the database at url (IsolatedDatabaseURL's).
func NewPoolOn(t testing.TB, url string, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("testsvc: parse database url: %v", err)
	}
	if configure != nil {
		configure(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("testsvc: new pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// dropAtCleanup drops a test's own database when t ends.
func dropAtCleanup(t testing.TB, drop func(context.Context) error) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := drop(ctx); err != nil {
			t.Errorf("testsvc: %v", err)
		}
	})
}
