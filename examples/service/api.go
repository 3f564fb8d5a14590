package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/workflows"
)

// api serves the JSON API on the cached repositories.
type api struct {
	credits    credits.Repo
	workflows  workflows.Repo
	cache      *cachelayer.Cache // the rate limit's counters
	rateLimit  int64             // requests per user per rateWindow; 0: no limit
	rateWindow time.Duration
	logger     *slog.Logger
}

// maxBody bounds a request body: a workflow spec is at most
// workflows.MaxSpecBytes compact, and may arrive indented.
const maxBody = 1 << 20

// routes registers the API's routes on mux. The per-user routes go
// through the rate limit.
func (a *api) routes(mux *http.ServeMux) {
	mux.Handle("GET /users/{id}/balances/{type}", a.perUser(a.getBalance))
	mux.Handle("POST /users/{id}/balances/{type}/add", a.perUser(a.changeBalance(a.credits.Add)))
	mux.Handle("POST /users/{id}/balances/{type}/deduct", a.perUser(a.changeBalance(a.credits.Deduct)))
	mux.HandleFunc("POST /workflows", a.createWorkflow)
	mux.HandleFunc("GET /workflows/{id}", a.getWorkflow)
	mux.HandleFunc("PUT /workflows/{id}", a.updateWorkflow)
}

// balanceJSON is a credits.Balance on the wire.
type balanceJSON struct {
	UserID    int64     `json:"user_id"`
	Type      string    `json:"type"`
	Amount    int64     `json:"amount"`
	Version   int64     `json:"version"`
	UpdatedAt time.Time `json:"updated_at,omitzero"` // absent before the first change
}

func toBalanceJSON(b credits.Balance) balanceJSON {
	return balanceJSON{UserID: b.UserID, Type: string(b.Type), Amount: b.Amount, Version: b.Version, UpdatedAt: b.UpdatedAt}
}

// changeJSON is the body of an add or a deduct.
type changeJSON struct {
	Amount int64  `json:"amount"`
	Reason string `json:"reason"`
}

// definitionJSON is a workflows.Definition on the wire.
type definitionJSON struct {
	ID        int64           `json:"id,omitempty"`
	Name      string          `json:"name"`
	Version   int64           `json:"version,omitempty"`
	Spec      json.RawMessage `json:"spec"`
	UpdatedAt time.Time       `json:"updated_at,omitzero"`
}

func toDefinitionJSON(d workflows.Definition) definitionJSON {
	return definitionJSON{ID: d.ID, Name: d.Name, Version: d.Version, Spec: d.Spec, UpdatedAt: d.UpdatedAt}
}

// userHandler is a per-user route, given the user id from the path.
type userHandler func(w http.ResponseWriter, r *http.Request, userID int64)

// rateEndpoint is the endpoint part of the rate limit's key,
// "rate:{userId}:{endpoint}" as in the original service: one budget per
// user across the per-user routes.
const rateEndpoint = "users"

// perUser parses the user id of the path (400 if it is not a positive
// integer) and applies the user's rate limit before calling next.
//
// The TypeScript service this replaces read the counter (GET) and then
// incremented it (INCR): two steps, so concurrent requests could all read
// a count under the limit and all pass. Cache.Allow counts and starts the
// window in one atomic step (a Lua script), so concurrent requests never
// exceed the limit.
func (a *api) perUser(next userHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		userID, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil || userID <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("user id %q: want a positive integer", r.PathValue("id")))
			return
		}
		if a.rateLimit > 0 {
			key := "rate:" + strconv.FormatInt(userID, 10) + ":" + rateEndpoint
			allowed, err := a.cache.Allow(r.Context(), key, a.rateLimit, a.rateWindow)
			// Allow fails open: without Redis (no-cache mode, Redis
			// down, breaker open) it returns true and an error that Is
			// ErrUnavailable, and the request is served unlimited, as
			// the original service did without Redis.
			if err != nil && !errors.Is(err, cachelayer.ErrUnavailable) {
				a.fail(w, r, err)
				return
			}
			if !allowed {
				w.Header().Set("Retry-After", a.retryAfter(r, key))
				writeError(w, http.StatusTooManyRequests, "rate limit exceeded")
				return
			}
		}
		next(w, r, userID)
	})
}

// retryAfter returns the seconds until the user's window ends (the
// counter's TTL, rounded up), or the whole window if Redis cannot say.
func (a *api) retryAfter(r *http.Request, key string) string {
	left, err := a.cache.TTL(r.Context(), key)
	if err != nil || left <= 0 {
		left = a.rateWindow
	}
	return strconv.FormatInt(max(int64(math.Ceil(left.Seconds())), 1), 10)
}

func (a *api) getBalance(w http.ResponseWriter, r *http.Request, userID int64) {
	b, err := a.credits.Balance(r.Context(), userID, credits.Type(r.PathValue("type")))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toBalanceJSON(b))
}

// changeBalance returns the handler of an add or a deduct (apply is
// credits.Repo's Add or Deduct). The Idempotency-Key header is required:
// a client that lost the reply repeats the request with the same key and
// gets the first result, applied once.
func (a *api) changeBalance(apply func(context.Context, credits.Change) (credits.Balance, error)) userHandler {
	return func(w http.ResponseWriter, r *http.Request, userID int64) {
		key := r.Header.Get("Idempotency-Key")
		if key == "" {
			writeError(w, http.StatusBadRequest, "the Idempotency-Key header is required")
			return
		}
		var body changeJSON
		if !a.decode(w, r, &body) {
			return
		}
		b, err := apply(r.Context(), credits.Change{
			UserID:         userID,
			Type:           credits.Type(r.PathValue("type")),
			Amount:         body.Amount,
			Reason:         body.Reason,
			IdempotencyKey: key,
		})
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, toBalanceJSON(b))
	}
}

// createWorkflow saves a new definition (its body has a name and a spec)
// and answers 201 with it, Version 1 and its new id.
func (a *api) createWorkflow(w http.ResponseWriter, r *http.Request) {
	var body definitionJSON
	if !a.decode(w, r, &body) {
		return
	}
	if body.ID != 0 || body.Version != 0 {
		writeError(w, http.StatusBadRequest, "a new definition has no id or version: PUT /workflows/{id} updates one")
		return
	}
	d, err := a.workflows.Save(r.Context(), workflows.Definition{Name: body.Name, Spec: body.Spec})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/workflows/"+strconv.FormatInt(d.ID, 10))
	writeJSON(w, http.StatusCreated, toDefinitionJSON(d))
}

func (a *api) getWorkflow(w http.ResponseWriter, r *http.Request) {
	id, ok := workflowID(w, r)
	if !ok {
		return
	}
	d, err := a.workflows.Definition(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toDefinitionJSON(d))
}

// updateWorkflow replaces a definition. The body carries the version the
// client read: a definition changed since answers 409 (read it again), a
// missing one 404.
func (a *api) updateWorkflow(w http.ResponseWriter, r *http.Request) {
	id, ok := workflowID(w, r)
	if !ok {
		return
	}
	var body definitionJSON
	if !a.decode(w, r, &body) {
		return
	}
	if body.ID != 0 && body.ID != id {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("body id %d differs from the path's %d", body.ID, id))
		return
	}
	d, err := a.workflows.Save(r.Context(), workflows.Definition{ID: id, Name: body.Name, Version: body.Version, Spec: body.Spec})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toDefinitionJSON(d))
}

// workflowID parses the definition id of the path, answering 400 if it is
// not a positive integer.
func workflowID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("workflow id %q: want a positive integer", r.PathValue("id")))
		return 0, false
	}
	return id, true
}

// decode reads the JSON body into dst, answering 400 (and returning
// false) if it is not one JSON value of dst's fields.
func (a *api) decode(w http.ResponseWriter, r *http.Request, dst any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "invalid JSON body: more than one value")
		return false
	}
	return true
}

// fail answers a repository error with its status: the one translation of
// the library's errors into HTTP. The library's messages never hold a
// password; unexpected errors are logged and answered without detail.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, credits.ErrInvalid), errors.Is(err, workflows.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, workflows.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, credits.ErrInsufficient), errors.Is(err, workflows.ErrConflict):
		status = http.StatusConflict
	case errors.Is(err, credits.ErrIdempotencyConflict):
		// The key was used for another change: 422, as the IETF
		// Idempotency-Key draft asks for a reused key.
		status = http.StatusUnprocessableEntity
	case errors.Is(err, credits.ErrCommitUnknown):
		// The change may or may not have been applied: repeating it with
		// the same Idempotency-Key tells, and applies it at most once.
		a.logger.Warn("commit outcome unknown", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusServiceUnavailable, err.Error()+": repeat the request with the same Idempotency-Key")
		return
	case errors.Is(err, workflows.ErrCommitUnknown):
		a.logger.Warn("commit outcome unknown", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusServiceUnavailable, err.Error()+": read the definition to find out")
		return
	}
	if status == http.StatusInternalServerError {
		a.logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, status, "internal error")
		return
	}
	writeError(w, status, err.Error())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
