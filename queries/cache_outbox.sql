-- name: CacheOutboxInsert :one
INSERT INTO cache_outbox (domain, cache_key, created_at)
VALUES (@domain::text, @cache_key::text, now())
RETURNING id;

-- name: CacheOutboxDelete :exec
DELETE FROM cache_outbox WHERE id = ANY(@ids::bigint[]);

-- name: CacheOutboxClaim :many
-- Oldest first; rows another sweeper holds are skipped, not waited for.
SELECT id, cache_key, created_at
FROM cache_outbox
WHERE domain = @domain::text
ORDER BY created_at, id
LIMIT @max_rows::int
FOR UPDATE SKIP LOCKED;

-- name: CacheOutboxStats :one
SELECT count(*)::bigint AS depth, min(created_at)::timestamptz AS oldest
FROM cache_outbox
WHERE domain = @domain::text;
