-- name: CacheOutboxInsert :one
INSERT INTO cache_outbox (domain, cache_key, created_at)
VALUES (@domain::text, @cache_key::text, now())
RETURNING id;

-- name: CacheOutboxDelete :execrows
DELETE FROM cache_outbox WHERE id = ANY(@ids::bigint[]);

-- name: CacheOutboxClaim :many
-- Oldest first; rows another sweeper holds are skipped, not waited for.
SELECT id, cache_key
FROM cache_outbox
WHERE domain = @domain::text
ORDER BY created_at, id
LIMIT @max_rows::int
FOR UPDATE SKIP LOCKED;

-- name: CacheOutboxListOld :many
-- Rows whose created_at is older than max_age_seconds, in id order after
-- after_id, without locking them. created_at is the start of the writing
-- transaction, which may have committed a moment ago: this only narrows
-- down the rows that may be moot.
SELECT id
FROM cache_outbox
WHERE domain = @domain::text
  AND created_at < now() - make_interval(secs => @max_age_seconds::float8)
  AND id > @after_id::bigint
ORDER BY id
LIMIT @max_rows::int;

-- name: CacheOutboxPresent :many
-- Which of these rows are still waiting (not yet swept by any instance).
SELECT id FROM cache_outbox WHERE id = ANY(@ids::bigint[]);

-- name: CacheOutboxStats :one
SELECT count(*)::bigint AS depth,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
FROM cache_outbox
WHERE domain = @domain::text;
