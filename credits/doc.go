// Package credits keeps user credit balances: a Postgres [Store] that
// decides every change in one transaction (balance row, ledger row), and a
// [Cached] decorator that serves balances from Redis for 60 s and
// invalidates them after every committed change.
//
// Money is decided in Postgres only: Deduct is one conditional UPDATE, a
// balance never goes negative, concurrent changes lose no update, and a
// repeated idempotency key applies once and returns the first result.
package credits
