package ghlcache

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

// Status is the state of the repositories as a service sees it.
type Status string

// Statuses. Degraded still serves every call correctly: reads go to
// Postgres, writes are invalidated once Redis is back.
const (
	StatusUp       Status = "up"       // Postgres and Redis answer
	StatusDegraded Status = "degraded" // Postgres answers; Redis does not, or no-cache mode
	StatusDown     Status = "down"     // Postgres does not answer: reads and writes fail
)

// HealthTimeout bounds [Repos.Health], whatever the context says.
const HealthTimeout = time.Second

// Check is the outcome of one dependency's probe.
type Check struct {
	Healthy  bool          `json:"healthy"`
	Disabled bool          `json:"disabled,omitempty"` // Redis: no-cache mode (no URL)
	Latency  time.Duration `json:"latency_ns"`
	Err      string        `json:"error,omitempty"` // why not healthy; never a password
}

// Health is what [Repos.Health] found.
type Health struct {
	Status   Status `json:"status"`
	Postgres Check  `json:"postgres"`
	Redis    Check  `json:"redis"`
}

// Ready reports whether the service can serve: Postgres answers (Redis
// down is degraded, not down).
func (h Health) Ready() bool { return h.Status != StatusDown }

// Health pings Postgres (one connection from the pool) and Redis (every
// master of a Cluster) at once and returns within HealthTimeout (1 s), or
// sooner if ctx ends. Postgres down is StatusDown; Redis down, or no-cache
// mode, StatusDegraded. Errors are redacted (no password, whatever the URL
// looked like).
func (r *Repos) Health(ctx context.Context) Health {
	ctx, cancel := context.WithTimeout(ctx, HealthTimeout)
	defer cancel()
	var h Health
	var wg sync.WaitGroup
	wg.Go(func() {
		start := time.Now()
		err := r.Pool.Ping(ctx)
		h.Postgres.Latency = time.Since(start)
		if err != nil {
			h.Postgres.Err = redact.Error(err, r.dbURL).Error()
			return
		}
		h.Postgres.Healthy = true
	})
	wg.Go(func() {
		rh := r.Cache.Health(ctx)
		h.Redis = Check{Healthy: rh.Healthy, Latency: rh.Latency, Err: rh.Err, Disabled: !r.Cache.Enabled()}
	})
	wg.Wait()
	switch {
	case !h.Postgres.Healthy:
		h.Status = StatusDown
	case !h.Redis.Healthy:
		h.Status = StatusDegraded
	default:
		h.Status = StatusUp
	}
	return h
}

// HealthHandler serves [Repos.Health] as JSON, for a readiness probe: 200
// while Ready (up or degraded), 503 when down. Mount it where the service
// wants (/readyz); a liveness probe should not depend on Postgres.
func (r *Repos) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h := r.Health(req.Context())
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !h.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
}
