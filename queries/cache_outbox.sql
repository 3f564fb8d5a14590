-- name: CacheOutboxInsert :one
INSERT INTO cache_outbox (domain, cache_key, created_at)
VALUES (@domain::text, @cache_key::text, now())
RETURNING id;

-- name: CacheOutboxDelete :exec
DELETE FROM cache_outbox WHERE id = ANY(@ids::bigint[]);

-- name: CacheOutboxClaim :many
-- Oldest first; rows another sweeper holds are skipped, not waited for.
-- expired rows are older than the domain's TTL + 1 min: their cache entry
-- has expired by itself, so they are dropped without a delete.
SELECT id, cache_key, created_at,
       (created_at < now() - make_interval(secs => @max_age_seconds::float8))::boolean AS expired
FROM cache_outbox
WHERE domain = @domain::text
ORDER BY created_at, id
LIMIT @max_rows::int
FOR UPDATE SKIP LOCKED;

-- name: CacheOutboxPresent :many
-- Which of these rows are still waiting (not yet swept by any instance).
SELECT id FROM cache_outbox WHERE id = ANY(@ids::bigint[]);

-- name: CacheOutboxStats :one
SELECT count(*)::bigint AS depth,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
FROM cache_outbox
WHERE domain = @domain::text;
