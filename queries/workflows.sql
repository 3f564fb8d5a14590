-- name: WorkflowDefinitionGet :one
SELECT id, name, version, spec, created_at, updated_at
FROM workflow_definitions
WHERE id = @id::bigint;

-- Each write below is one statement, one round trip in autocommit: the
-- change and, when outbox_domain is not NULL and a row changed, the
-- cache_outbox row naming the definition's full cache key. outbox_id is
-- that row, 0 when none was written. A data-modifying CTE is safe here:
-- no part of it can find a racing write's row after another part wrote.
-- CTE r tells the table's triggers (db/migrations/00006_external_writes.sql)
-- that this key's row is recorded here: the main query reads r, so it runs
-- before the statement's AFTER triggers, which fire at the statement's end.

-- name: WorkflowDefinitionInsert :one
-- The new id is known only inside the statement, so the key is built here:
-- outbox_key_head || id || outbox_key_tail.
WITH d AS (
    INSERT INTO workflow_definitions (name, version, spec, created_at, updated_at)
    VALUES (@name::text, 1, @spec::jsonb, now(), now())
    RETURNING id, name, version, spec, created_at, updated_at
), o AS (
    INSERT INTO cache_outbox (domain, cache_key, created_at)
    SELECT sqlc.narg(outbox_domain)::text,
           sqlc.narg(outbox_key_head)::text || d.id::text || sqlc.narg(outbox_key_tail)::text, now()
    FROM d
    WHERE sqlc.narg(outbox_domain)::text IS NOT NULL
    RETURNING id
), r AS (
    SELECT set_config('ghlcache.recorded_key',
                      sqlc.narg(outbox_key_head)::text || d.id::text || sqlc.narg(outbox_key_tail)::text, true)
    FROM d
    WHERE sqlc.narg(outbox_domain)::text IS NOT NULL
)
SELECT d.id, d.name, d.version, d.spec, d.created_at, d.updated_at,
       coalesce((SELECT o.id FROM o), 0)::bigint AS outbox_id
FROM d
WHERE (SELECT count(*) FROM r) >= 0;

-- name: WorkflowDefinitionUpdate :one
-- Optimistic concurrency: only the version the caller read is replaced.
-- Always one row: updated is false when no row matched, and then present
-- tells why (true: the row exists at another version; false: no such id),
-- as of the statement's snapshot.
WITH u AS (
    UPDATE workflow_definitions
    SET name = @name::text, spec = @spec::jsonb, version = version + 1, updated_at = now()
    WHERE id = @id::bigint AND version = @version::bigint
    RETURNING id, name, version, spec, created_at, updated_at
), o AS (
    INSERT INTO cache_outbox (domain, cache_key, created_at)
    SELECT sqlc.narg(outbox_domain)::text, sqlc.narg(outbox_key)::text, now()
    FROM u
    WHERE sqlc.narg(outbox_domain)::text IS NOT NULL
    RETURNING id
), r AS (
    SELECT set_config('ghlcache.recorded_key', sqlc.narg(outbox_key)::text, true)
    WHERE sqlc.narg(outbox_domain)::text IS NOT NULL
)
SELECT (u.id IS NOT NULL)::bool AS updated,
       coalesce(u.id, 0)::bigint AS id, coalesce(u.name, '')::text AS name,
       coalesce(u.version, 0)::bigint AS version, coalesce(u.spec, '{}')::jsonb AS spec,
       coalesce(u.updated_at, now())::timestamptz AS updated_at,
       coalesce((SELECT o.id FROM o), 0)::bigint AS outbox_id,
       EXISTS (SELECT 1 FROM workflow_definitions WHERE id = @id::bigint)::bool AS present
FROM (SELECT) AS one
LEFT JOIN u ON true
WHERE (SELECT count(*) FROM r) >= 0;

-- name: WorkflowDefinitionDelete :one
WITH d AS (
    DELETE FROM workflow_definitions WHERE id = @id::bigint RETURNING id
), o AS (
    INSERT INTO cache_outbox (domain, cache_key, created_at)
    SELECT sqlc.narg(outbox_domain)::text, sqlc.narg(outbox_key)::text, now()
    FROM d
    WHERE sqlc.narg(outbox_domain)::text IS NOT NULL
    RETURNING id
), r AS (
    SELECT set_config('ghlcache.recorded_key', sqlc.narg(outbox_key)::text, true)
    WHERE sqlc.narg(outbox_domain)::text IS NOT NULL
)
SELECT (SELECT count(*) FROM d)::bigint AS deleted,
       coalesce((SELECT o.id FROM o), 0)::bigint AS outbox_id
WHERE (SELECT count(*) FROM r) >= 0;
