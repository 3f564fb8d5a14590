// Package workflows keeps workflow definitions: a Postgres [Store] with
// optimistic concurrency on Version, and a [Cached] decorator that serves
// definitions from Redis for 300 s (and caches "not found" for 30 s),
// invalidating them after every committed Save or Delete.
package workflows
