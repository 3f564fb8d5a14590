package cachelayer

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// breaker is a consecutive-failures circuit breaker. Closed, every call
// goes through; after threshold consecutive failures it opens and calls are
// refused; after cooldown exactly one call (the half-open probe) goes
// through: success closes it, failure opens it for another cooldown.
//
// allow is lock-free while closed (one atomic load), which keeps the hit
// path cheap; state changes take mu.
type breaker struct {
	reads     readBatcher // the Fetch reads of the breaker's Redis (or master) in flight and waiting
	threshold int
	cooldown  time.Duration
	// probeTTL is how long a half-open probe may go unreported before
	// another call may probe: a probe's outcome can be reported to
	// another breaker when the topology changes between allow and outcome
	// (a key's master moved), and the breaker must not stay half-open forever.
	probeTTL  time.Duration
	logger    *slog.Logger
	onRecover func() // called once per open → closed transition
	onOpen    func() // called once per closed → open transition (after mu is released)

	open     atomic.Bool  // state != closed; read without mu on the fast path
	failures atomic.Int64 // consecutive failures while closed

	mu       sync.Mutex // guards openedAt, probing, probedAt
	openedAt time.Time  // when the breaker last opened
	probing  bool       // a half-open probe is in flight
	probedAt time.Time  // when the probe in flight was handed out
}

// allow reports whether a Redis call may be made now. When it returns true
// for a half-open probe, the caller must report the outcome with success,
// failure or neutral.
func (b *breaker) allow() bool {
	if !b.open.Load() {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open.Load() {
		return true
	}
	if b.probing && (b.probeTTL <= 0 || time.Since(b.probedAt) < b.probeTTL) {
		return false
	}
	if time.Since(b.openedAt) < b.cooldown {
		return false
	}
	b.probing = true
	b.probedAt = time.Now()
	return true
}

// success records a call that Redis answered.
func (b *breaker) success() {
	if !b.open.Load() {
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
		return
	}
	b.mu.Lock()
	if !b.open.Load() {
		b.mu.Unlock()
		return
	}
	b.open.Store(false)
	b.failures.Store(0)
	b.probing = false
	down := time.Since(b.openedAt)
	b.mu.Unlock()
	b.logger.Warn("cachelayer: redis is back; circuit breaker closed", "open_for", down.Round(time.Millisecond))
	if b.onRecover != nil {
		b.onRecover()
	}
}

// failure records a call that failed for want of Redis (timeout, connection
// error).
func (b *breaker) failure(err error) {
	if !b.open.Load() {
		if b.failures.Add(1) < int64(b.threshold) {
			return
		}
	}
	b.mu.Lock()
	if b.open.Load() {
		if b.probing { // the half-open probe failed: another cooldown
			b.probing = false
			b.openedAt = time.Now()
		}
		b.mu.Unlock()
		return
	}
	if b.failures.Load() < int64(b.threshold) { // reset by a success meanwhile
		b.mu.Unlock()
		return
	}
	b.open.Store(true)
	b.openedAt = time.Now()
	b.mu.Unlock()
	if b.onOpen != nil {
		b.onOpen()
	}
	b.logger.Warn("cachelayer: redis failing; circuit breaker open, reads go to the loaders",
		"consecutive_failures", b.failures.Load(), "cooldown", b.cooldown, "err", err)
}

// reset closes the breaker without a probe, for a breaker whose master
// left the topology (its slots moved to another node): nothing will probe
// it again. It reports whether the breaker was open.
func (b *breaker) reset() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	was := b.open.Load()
	b.open.Store(false)
	b.failures.Store(0)
	b.probing = false
	return was
}

// neutral releases a half-open probe whose outcome says nothing about Redis
// (the caller's context ended first).
func (b *breaker) neutral() {
	if !b.open.Load() {
		return
	}
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// isOpen reports whether calls are being refused or probed.
func (b *breaker) isOpen() bool { return b.open.Load() }
