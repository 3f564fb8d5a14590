-- name: CacheOutboxInsert :one
INSERT INTO cache_outbox (domain, cache_key, created_at)
VALUES (@domain::text, @cache_key::text, now())
RETURNING id;

-- name: CacheOutboxDelete :execrows
DELETE FROM cache_outbox WHERE id = ANY(@ids::bigint[]);

-- name: CacheOutboxMarkDone :execrows
-- Marks waiting rows done after their keys' deletes succeeded. Rows a
-- sweeper holds are skipped, not waited for: that sweeper deletes their
-- keys and marks them itself (or leaves them waiting, which costs one more
-- delete). A transaction's own locks never make it skip.
UPDATE cache_outbox SET done_at = now()
WHERE id IN (
    SELECT o.id FROM cache_outbox o
    WHERE o.id = ANY(@ids::bigint[]) AND o.done_at IS NULL
    FOR UPDATE SKIP LOCKED
);

-- name: CacheOutboxClaim :many
-- Waiting rows after after_id, in id order (the sweep's cursor: a row whose
-- delete failed is not claimed again in the same sweep), older by
-- created_at than grace_seconds (rows whose writer is most likely still
-- delivering them are left to it; measured from this statement's start, not
-- the transaction's, so grace 0 takes every row committed before it) or
-- external (a trigger's: no writer delivers it); rows another sweeper holds
-- are skipped, not waited for.
SELECT id, cache_key, whole_prefix
FROM cache_outbox
WHERE domain = @domain::text
  AND done_at IS NULL
  AND id > @after_id::bigint
  AND (external OR created_at < statement_timestamp() - make_interval(secs => @grace_seconds::float8))
ORDER BY id
LIMIT @max_rows::int
FOR UPDATE SKIP LOCKED;

-- name: CacheOutboxTidy :one
-- One statement per sweep: removes the done rows kept longer than
-- keep_seconds, says whether any row of the domain still waits and
-- whether any waiting row is external or older (by created_at) than
-- grace_seconds, and, when refresh is set, keeps the sweeper's namespace
-- live for live_seconds more (as CacheNamespaceRegister; was_live is false
-- when it had lapsed, and meaningless when refresh is not set).
WITH cleaned AS (
    DELETE FROM cache_outbox c
    WHERE c.domain = @domain::text
      AND c.done_at IS NOT NULL
      AND c.done_at < now() - make_interval(secs => @keep_seconds::float8)
    RETURNING 1
), old AS (
    SELECT n.live_until FROM cache_namespaces n
    WHERE @refresh::bool AND n.domain = @domain::text AND n.prefix = @prefix::text
), up AS (
    INSERT INTO cache_namespaces AS n (domain, prefix, live_until)
    SELECT @domain::text, @prefix::text, now() + make_interval(secs => @live_seconds::float8)
    WHERE @refresh::bool
    ON CONFLICT (domain, prefix) DO UPDATE SET live_until = greatest(n.live_until, EXCLUDED.live_until)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM cache_outbox w WHERE w.domain = @domain::text AND w.done_at IS NULL)::bool AS waiting,
       EXISTS (SELECT 1 FROM cache_outbox g WHERE g.domain = @domain::text AND g.done_at IS NULL
                  AND (g.external OR g.created_at < now() - make_interval(secs => @grace_seconds::float8)))::bool AS claimable,
       (SELECT count(*) FROM cleaned)::bigint AS cleaned,
       coalesce((SELECT old.live_until > now() FROM old), false)::bool AS was_live,
       (SELECT count(*) FROM up)::bigint AS refreshed;

-- name: CacheOutboxRecent :many
-- Done rows younger than keep_seconds, in (done_at, id) order after the
-- cursor: the keys to delete again after a Redis topology change.
SELECT id, cache_key, whole_prefix, done_at::timestamptz AS done_at
FROM cache_outbox
WHERE domain = @domain::text
  AND done_at IS NOT NULL
  AND done_at >= now() - make_interval(secs => @keep_seconds::float8)
  AND (done_at, id) > (@after_done_at::timestamptz, @after_id::bigint)
ORDER BY done_at, id
LIMIT @max_rows::int;

-- name: CacheOutboxListOld :many
-- Waiting rows whose created_at is older than max_age_seconds, in id order
-- after after_id, without locking them. created_at is the start of the
-- writing transaction, which may have committed a moment ago: this only
-- narrows down the rows that may be moot.
SELECT id
FROM cache_outbox
WHERE domain = @domain::text
  AND done_at IS NULL
  AND created_at < now() - make_interval(secs => @max_age_seconds::float8)
  AND id > @after_id::bigint
ORDER BY id
LIMIT @max_rows::int;

-- name: CacheOutboxDropMoot :execrows
-- Removes moot rows that still wait (a row done meanwhile is kept).
DELETE FROM cache_outbox WHERE id = ANY(@ids::bigint[]) AND done_at IS NULL;

-- name: CacheOutboxWaitingAmong :many
-- Which of these rows still wait for their delete (not done, not dropped,
-- by any instance).
SELECT id FROM cache_outbox WHERE id = ANY(@ids::bigint[]) AND done_at IS NULL;

-- name: CacheOutboxStats :one
-- Rows still waiting for their delete; done rows kept for re-deletes do
-- not count.
SELECT count(*)::bigint AS depth,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
FROM cache_outbox
WHERE domain = @domain::text AND done_at IS NULL;

-- name: CacheOutboxDomainStats :many
-- Every domain's waiting rows and the age of its oldest, for operators.
SELECT domain, count(*)::bigint AS depth,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
FROM cache_outbox
WHERE done_at IS NULL
GROUP BY domain
ORDER BY domain;

-- name: CacheNamespaceRegister :one
-- Registers (or keeps live) the namespace of a cached repository: the
-- triggers write rows for it until live_until. was_live is false for a new
-- namespace or one that had lapsed (its writes since were not recorded for
-- it). The snapshot is taken by the caller after this commits.
WITH old AS (
    SELECT n.live_until FROM cache_namespaces n
    WHERE n.domain = @domain::text AND n.prefix = @prefix::text
), up AS (
    INSERT INTO cache_namespaces AS n (domain, prefix, live_until)
    VALUES (@domain::text, @prefix::text, now() + make_interval(secs => @live_seconds::float8))
    ON CONFLICT (domain, prefix) DO UPDATE SET live_until = greatest(n.live_until, EXCLUDED.live_until)
    RETURNING 1
)
SELECT coalesce((SELECT old.live_until > now() FROM old), false)::bool AS was_live,
       (SELECT count(*) FROM up)::bigint AS registered;

-- name: CacheNamespaceRelease :exec
-- A closing repository shortens its namespace's life to keep_seconds (the
-- expiry of what it filled); another live instance of it lengthens it again
-- at its next refresh.
UPDATE cache_namespaces
SET live_until = least(live_until, now() + make_interval(secs => @keep_seconds::float8))
WHERE domain = @domain::text AND prefix = @prefix::text;

-- name: CacheNamespaceLive :many
-- The live namespaces of a domain.
SELECT prefix, live_until FROM cache_namespaces
WHERE domain = @domain::text AND live_until > now()
ORDER BY prefix;
