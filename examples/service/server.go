package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/ghl-agency/ghlcache"
	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

// hooks let tests order events; nil in the service.
type hooks struct {
	wrap       func(http.Handler) http.Handler // wraps the whole handler
	onShutdown func()                          // called once the server stops accepting (http.Server.RegisterOnShutdown)
}

// run reads the configuration from the environment (lookupEnv:
// os.LookupEnv) and serves until ctx ends; see serve.
func run(ctx context.Context, lookupEnv func(string) (string, bool), stdout io.Writer, ready chan<- string) error {
	cfg, err := loadConfig(lookupEnv)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, stdout, ready)
}

// serve opens the repositories, listens on cfg.addr and sends the address
// it listens on to ready (if not nil; buffered, or read at once), then
// serves until ctx ends. Then it shuts down in order: it stops accepting
// and waits up to cfg.shutdownTimeout for the requests in flight, closes
// the repositories (their outbox sweepers last), and shuts the
// MeterProvider down. It returns nil after a clean shutdown. It logs to
// stdout, never a password.
func serve(ctx context.Context, cfg config, stdout io.Writer, ready chan<- string) (err error) {
	logger := slog.New(slog.NewTextHandler(stdout, nil))
	tel, err := newTelemetry()
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = errors.Join(err, tel.shutdown(sctx))
	}()

	repos, err := ghlcache.Open(ctx, ghlcache.Config{
		DatabaseURL:    cfg.databaseURL,
		RedisURL:       cfg.redisURL,
		Migrate:        cfg.migrate,
		Cache:          &cachelayer.Config{Prefix: cfg.cachePrefix, Logger: logger},
		Logger:         logger,
		MeterProvider:  tel.meterProvider,
		TracerProvider: tel.tracerProvider,
		ConfigureRedis: tel.configureRedis,
	})
	if err != nil {
		return err // ghlcache.Open's errors are redacted
	}
	defer func() { err = errors.Join(err, repos.Close()) }()

	mux := http.NewServeMux()
	a := &api{
		credits:    repos.Credits,
		workflows:  repos.Workflows,
		cache:      repos.Cache,
		rateLimit:  cfg.rateLimit,
		rateWindow: cfg.rateWindow,
		logger:     logger,
	}
	a.routes(mux)
	// Liveness answers while the process serves; readiness asks
	// Postgres and Redis (503 only when Postgres is down).
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.Handle("GET /readyz", repos.HealthHandler())
	mux.Handle("GET /metrics", tel.metricsHandler())
	var handler http.Handler = mux
	if cfg.hooks.wrap != nil {
		handler = cfg.hooks.wrap(handler)
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Request contexts do not derive from ctx (BaseContext is left
	// alone): the signal that starts the shutdown must not cancel the
	// requests it lets finish.
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if cfg.hooks.onShutdown != nil {
		srv.RegisterOnShutdown(cfg.hooks.onShutdown)
	}
	redis := "no-cache mode"
	if cfg.redisURL != "" {
		redis = redact.URL(cfg.redisURL)
	}
	logger.Info("listening", "addr", ln.Addr().String(), "database", redact.URL(cfg.databaseURL), "redis", redis,
		"rate_limit", cfg.rateLimit, "rate_window", cfg.rateWindow)
	if ready != nil {
		ready <- ln.Addr().String()
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	logger.Info("shutting down", "timeout", cfg.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Requests still running after the timeout are cut off.
		_ = srv.Close()
		<-served
		return fmt.Errorf("shutdown: %w", err)
	}
	<-served // http.ErrServerClosed
	logger.Info("stopped")
	return nil
}
