-- +goose Up
-- Every change of credit_balances and workflow_definitions records its
-- invalidation, whoever makes it: triggers write the outbox rows in the
-- writer's own transaction, so an UPDATE from psql, a billing job in
-- another language or a migration invalidates the cache exactly when it
-- commits, and NOTIFY wakes every instance's sweeper at once.
--
-- Cache keys get their prefix from cache_namespaces: every cached
-- repository registers its (domain, Redis prefix) there and keeps it live
-- while it runs (live_until, refreshed by its sweeper, is always later
-- than the expiry of any entry it may have filled). A trigger writes one
-- row per changed key and live namespace of the domain, with the full key,
-- marked external (swept at once: no writer is delivering it). Several
-- prefixes on one database each get their own rows; a namespace nobody
-- has run for longer than its TTL gets none (its entries have expired).
CREATE TABLE cache_namespaces (
    domain     text        NOT NULL,
    prefix     text        NOT NULL,
    live_until timestamptz NOT NULL,
    PRIMARY KEY (domain, prefix)
);

-- external: written by a trigger for a change made outside the library
-- (or for another namespace than the writer's), swept as soon as it is
-- seen. whole_prefix: cache_key is a key prefix (the domain's, after a
-- TRUNCATE or a statement changing more rows than ghlcache.bulk_threshold)
-- and every key under it is deleted.
ALTER TABLE cache_outbox
    ADD COLUMN external boolean NOT NULL DEFAULT false,
    ADD COLUMN whole_prefix boolean NOT NULL DEFAULT false;

-- The trigger functions write the rows of one statement's change, in one
-- INSERT: for every live namespace of the domain, one row per changed key
-- (built as the Go code builds it), or, when the statement changed more
-- keys than the setting ghlcache.bulk_threshold (1000 when unset), or was
-- a TRUNCATE, one whole_prefix row for the domain's key prefix. The key a
-- library write records itself in this transaction (the setting
-- ghlcache.recorded_key, a full key) is skipped. When they wrote a row they
-- notify channel 'ghlcache_' || domain (once per transaction: Postgres
-- folds equal notifications). Statement-level triggers with transition
-- tables: one call per statement, however many rows it changed.

-- The balance of (user_id, credit_type) is "credits:{user_id}:{credit_type}"
-- (credits.Key).
-- +goose StatementBegin
CREATE FUNCTION credit_balances_cache_outbox() RETURNS trigger
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    recorded  text := coalesce(current_setting('ghlcache.recorded_key', true), '');
    threshold bigint := coalesce(nullif(current_setting('ghlcache.bulk_threshold', true), '')::bigint, 1000);
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'credits', n.prefix || 'credits:', now(), true, true
        FROM cache_namespaces n WHERE n.domain = 'credits' AND n.live_until > now();
    ELSIF TG_OP = 'INSERT' THEN
        WITH k AS (
            SELECT DISTINCT 'credits:' || r.user_id::text || ':' || r.credit_type AS key FROM new_rows r
        ), ns AS (
            SELECT n.prefix FROM cache_namespaces n WHERE n.domain = 'credits' AND n.live_until > now()
        ), bulk AS (
            SELECT count(*) > threshold AS whole FROM k
        )
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'credits', ns.prefix || k.key, now(), true, false
        FROM k, ns, bulk
        WHERE NOT bulk.whole AND ns.prefix || k.key <> recorded
        UNION ALL
        SELECT 'credits', ns.prefix || 'credits:', now(), true, true
        FROM ns, bulk
        WHERE bulk.whole;
    ELSIF TG_OP = 'DELETE' THEN
        WITH k AS (
            SELECT DISTINCT 'credits:' || r.user_id::text || ':' || r.credit_type AS key FROM old_rows r
        ), ns AS (
            SELECT n.prefix FROM cache_namespaces n WHERE n.domain = 'credits' AND n.live_until > now()
        ), bulk AS (
            SELECT count(*) > threshold AS whole FROM k
        )
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'credits', ns.prefix || k.key, now(), true, false
        FROM k, ns, bulk
        WHERE NOT bulk.whole AND ns.prefix || k.key <> recorded
        UNION ALL
        SELECT 'credits', ns.prefix || 'credits:', now(), true, true
        FROM ns, bulk
        WHERE bulk.whole;
    ELSE -- an UPDATE may move a row to another key: both are stale
        WITH k AS (
            SELECT DISTINCT u.key AS key FROM (SELECT 'credits:' || r.user_id::text || ':' || r.credit_type FROM old_rows r UNION ALL SELECT 'credits:' || r.user_id::text || ':' || r.credit_type FROM new_rows r) AS u(key)
        ), ns AS (
            SELECT n.prefix FROM cache_namespaces n WHERE n.domain = 'credits' AND n.live_until > now()
        ), bulk AS (
            SELECT count(*) > threshold AS whole FROM k
        )
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'credits', ns.prefix || k.key, now(), true, false
        FROM k, ns, bulk
        WHERE NOT bulk.whole AND ns.prefix || k.key <> recorded
        UNION ALL
        SELECT 'credits', ns.prefix || 'credits:', now(), true, true
        FROM ns, bulk
        WHERE bulk.whole;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('ghlcache_credits', '');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- The definition of id is "workflow:{id}:definition" (workflows.Key).
-- +goose StatementBegin
CREATE FUNCTION workflow_definitions_cache_outbox() RETURNS trigger
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    recorded  text := coalesce(current_setting('ghlcache.recorded_key', true), '');
    threshold bigint := coalesce(nullif(current_setting('ghlcache.bulk_threshold', true), '')::bigint, 1000);
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'workflows', n.prefix || 'workflow:', now(), true, true
        FROM cache_namespaces n WHERE n.domain = 'workflows' AND n.live_until > now();
    ELSIF TG_OP = 'INSERT' THEN
        WITH k AS (
            SELECT DISTINCT 'workflow:' || r.id::text || ':definition' AS key FROM new_rows r
        ), ns AS (
            SELECT n.prefix FROM cache_namespaces n WHERE n.domain = 'workflows' AND n.live_until > now()
        ), bulk AS (
            SELECT count(*) > threshold AS whole FROM k
        )
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'workflows', ns.prefix || k.key, now(), true, false
        FROM k, ns, bulk
        WHERE NOT bulk.whole AND ns.prefix || k.key <> recorded
        UNION ALL
        SELECT 'workflows', ns.prefix || 'workflow:', now(), true, true
        FROM ns, bulk
        WHERE bulk.whole;
    ELSIF TG_OP = 'DELETE' THEN
        WITH k AS (
            SELECT DISTINCT 'workflow:' || r.id::text || ':definition' AS key FROM old_rows r
        ), ns AS (
            SELECT n.prefix FROM cache_namespaces n WHERE n.domain = 'workflows' AND n.live_until > now()
        ), bulk AS (
            SELECT count(*) > threshold AS whole FROM k
        )
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'workflows', ns.prefix || k.key, now(), true, false
        FROM k, ns, bulk
        WHERE NOT bulk.whole AND ns.prefix || k.key <> recorded
        UNION ALL
        SELECT 'workflows', ns.prefix || 'workflow:', now(), true, true
        FROM ns, bulk
        WHERE bulk.whole;
    ELSE -- an UPDATE may move a row to another key: both are stale
        WITH k AS (
            SELECT DISTINCT u.key AS key FROM (SELECT 'workflow:' || r.id::text || ':definition' FROM old_rows r UNION ALL SELECT 'workflow:' || r.id::text || ':definition' FROM new_rows r) AS u(key)
        ), ns AS (
            SELECT n.prefix FROM cache_namespaces n WHERE n.domain = 'workflows' AND n.live_until > now()
        ), bulk AS (
            SELECT count(*) > threshold AS whole FROM k
        )
        INSERT INTO cache_outbox (domain, cache_key, created_at, external, whole_prefix)
        SELECT 'workflows', ns.prefix || k.key, now(), true, false
        FROM k, ns, bulk
        WHERE NOT bulk.whole AND ns.prefix || k.key <> recorded
        UNION ALL
        SELECT 'workflows', ns.prefix || 'workflow:', now(), true, true
        FROM ns, bulk
        WHERE bulk.whole;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('ghlcache_workflows', '');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- A trigger with transition tables fires on one event only. The balance
-- triggers do not fire for a statement of credit_apply that records its
-- invalidations itself (the setting ghlcache.recorded, on only around that
-- statement): the WHEN is checked without calling the function, which
-- keeps the library's own writes as cheap as without triggers.
CREATE TRIGGER credit_balances_outbox_insert AFTER INSERT ON credit_balances
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('ghlcache.recorded', true), '') = '')
    EXECUTE FUNCTION credit_balances_cache_outbox();
CREATE TRIGGER credit_balances_outbox_update AFTER UPDATE ON credit_balances
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('ghlcache.recorded', true), '') = '')
    EXECUTE FUNCTION credit_balances_cache_outbox();
CREATE TRIGGER credit_balances_outbox_delete AFTER DELETE ON credit_balances
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('ghlcache.recorded', true), '') = '')
    EXECUTE FUNCTION credit_balances_cache_outbox();
CREATE TRIGGER credit_balances_outbox_truncate AFTER TRUNCATE ON credit_balances
    FOR EACH STATEMENT EXECUTE FUNCTION credit_balances_cache_outbox();

CREATE TRIGGER workflow_definitions_outbox_insert AFTER INSERT ON workflow_definitions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION workflow_definitions_cache_outbox();
CREATE TRIGGER workflow_definitions_outbox_update AFTER UPDATE ON workflow_definitions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION workflow_definitions_cache_outbox();
CREATE TRIGGER workflow_definitions_outbox_delete AFTER DELETE ON workflow_definitions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION workflow_definitions_cache_outbox();
CREATE TRIGGER workflow_definitions_outbox_truncate AFTER TRUNCATE ON workflow_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_definitions_cache_outbox();

-- credit_apply tells the triggers which key it records itself.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION credit_apply(
    p_user_id bigint, p_credit_type text, p_delta bigint, p_reason text,
    p_idempotency_key text, p_outbox_domain text, p_outbox_key text)
RETURNS TABLE (outcome text, balance bigint, version bigint, updated_at timestamptz,
               first_delta bigint, outbox_id bigint)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    l credit_ledger%ROWTYPE;
    b credit_balances%ROWTYPE;
    o bigint := 0;
    changed boolean;
BEGIN
    IF p_outbox_domain IS NOT NULL THEN
        -- This change records its own invalidations (below), for its own
        -- namespace and every other live one: the balance triggers skip
        -- its balance statement.
        PERFORM set_config('ghlcache.recorded', 'on', true);
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO l FROM credit_ledger AS cl
        WHERE cl.user_id = p_user_id AND cl.credit_type = p_credit_type
          AND cl.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN QUERY SELECT 'replay'::text, l.balance_after, l.version_after, l.created_at, l.delta, 0::bigint;
            RETURN;
        END IF;
    END IF;

    IF p_delta > 0 THEN
        -- Upsert: creates the row at version 1 or adds to it. Overflow of
        -- bigint raises 22003 (the store's ErrInvalid).
        INSERT INTO credit_balances AS cb (user_id, credit_type, balance, version, updated_at)
        VALUES (p_user_id, p_credit_type, p_delta, 1, now())
        ON CONFLICT (user_id, credit_type) DO UPDATE
        SET balance    = cb.balance + EXCLUDED.balance,
            version    = cb.version + 1,
            updated_at = now()
        RETURNING cb.* INTO b;
        PERFORM set_config('ghlcache.recorded', '', true);
    ELSE
        -- One conditional UPDATE: a concurrent deduct waits for the row lock
        -- and re-checks the condition, so no update is lost and the balance
        -- never goes negative.
        UPDATE credit_balances AS cb
        SET balance    = cb.balance + p_delta,
            version    = cb.version + 1,
            updated_at = now()
        WHERE cb.user_id = p_user_id AND cb.credit_type = p_credit_type
          AND cb.balance >= -p_delta
        RETURNING cb.* INTO b;
        changed := FOUND; -- before PERFORM, which sets FOUND
        PERFORM set_config('ghlcache.recorded', '', true);
        IF NOT changed THEN
            IF p_idempotency_key IS NOT NULL THEN
                -- A racing first attempt with this key may have taken the
                -- credits; the UPDATE waited for its commit.
                SELECT * INTO l FROM credit_ledger AS cl
                WHERE cl.user_id = p_user_id AND cl.credit_type = p_credit_type
                  AND cl.idempotency_key = p_idempotency_key;
                IF FOUND THEN
                    RETURN QUERY SELECT 'replay'::text, l.balance_after, l.version_after, l.created_at, l.delta, 0::bigint;
                    RETURN;
                END IF;
            END IF;
            RETURN QUERY SELECT 'insufficient'::text, 0::bigint, 0::bigint, now(), 0::bigint, 0::bigint;
            RETURN;
        END IF;
    END IF;

    INSERT INTO credit_ledger (user_id, credit_type, delta, balance_after, version_after, reason, idempotency_key, created_at)
    VALUES (p_user_id, p_credit_type, p_delta, b.balance, b.version, p_reason, p_idempotency_key, now())
    ON CONFLICT (user_id, credit_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit_apply: idempotency key % of user % % was used by a racing change',
            p_idempotency_key, p_user_id, p_credit_type
            USING ERRCODE = 'GHL01';
    END IF;

    IF p_outbox_domain IS NOT NULL THEN
        INSERT INTO cache_outbox (domain, cache_key, created_at)
        VALUES (p_outbox_domain, p_outbox_key, now())
        RETURNING id INTO o;
        -- Every other live namespace of the domain (another prefix on this
        -- database), as the triggers would: external rows, swept at once.
        INSERT INTO cache_outbox (domain, cache_key, created_at, external)
        SELECT p_outbox_domain, n.prefix || k.key, now(), true
        FROM cache_namespaces n, (SELECT 'credits:' || p_user_id::text || ':' || p_credit_type) AS k(key)
        WHERE n.domain = p_outbox_domain AND n.live_until > now()
          AND n.prefix || k.key <> p_outbox_key;
        IF FOUND THEN
            PERFORM pg_notify('ghlcache_' || p_outbox_domain, '');
        END IF;
    END IF;
    RETURN QUERY SELECT 'applied'::text, b.balance, b.version, b.updated_at, p_delta, o;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION credit_apply(
    p_user_id bigint, p_credit_type text, p_delta bigint, p_reason text,
    p_idempotency_key text, p_outbox_domain text, p_outbox_key text)
RETURNS TABLE (outcome text, balance bigint, version bigint, updated_at timestamptz,
               first_delta bigint, outbox_id bigint)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    l credit_ledger%ROWTYPE;
    b credit_balances%ROWTYPE;
    o bigint := 0;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO l FROM credit_ledger AS cl
        WHERE cl.user_id = p_user_id AND cl.credit_type = p_credit_type
          AND cl.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN QUERY SELECT 'replay'::text, l.balance_after, l.version_after, l.created_at, l.delta, 0::bigint;
            RETURN;
        END IF;
    END IF;

    IF p_delta > 0 THEN
        -- Upsert: creates the row at version 1 or adds to it. Overflow of
        -- bigint raises 22003 (the store's ErrInvalid).
        INSERT INTO credit_balances AS cb (user_id, credit_type, balance, version, updated_at)
        VALUES (p_user_id, p_credit_type, p_delta, 1, now())
        ON CONFLICT (user_id, credit_type) DO UPDATE
        SET balance    = cb.balance + EXCLUDED.balance,
            version    = cb.version + 1,
            updated_at = now()
        RETURNING cb.* INTO b;
    ELSE
        -- One conditional UPDATE: a concurrent deduct waits for the row lock
        -- and re-checks the condition, so no update is lost and the balance
        -- never goes negative.
        UPDATE credit_balances AS cb
        SET balance    = cb.balance + p_delta,
            version    = cb.version + 1,
            updated_at = now()
        WHERE cb.user_id = p_user_id AND cb.credit_type = p_credit_type
          AND cb.balance >= -p_delta
        RETURNING cb.* INTO b;
        IF NOT FOUND THEN
            IF p_idempotency_key IS NOT NULL THEN
                -- A racing first attempt with this key may have taken the
                -- credits; the UPDATE waited for its commit.
                SELECT * INTO l FROM credit_ledger AS cl
                WHERE cl.user_id = p_user_id AND cl.credit_type = p_credit_type
                  AND cl.idempotency_key = p_idempotency_key;
                IF FOUND THEN
                    RETURN QUERY SELECT 'replay'::text, l.balance_after, l.version_after, l.created_at, l.delta, 0::bigint;
                    RETURN;
                END IF;
            END IF;
            RETURN QUERY SELECT 'insufficient'::text, 0::bigint, 0::bigint, now(), 0::bigint, 0::bigint;
            RETURN;
        END IF;
    END IF;

    INSERT INTO credit_ledger (user_id, credit_type, delta, balance_after, version_after, reason, idempotency_key, created_at)
    VALUES (p_user_id, p_credit_type, p_delta, b.balance, b.version, p_reason, p_idempotency_key, now())
    ON CONFLICT (user_id, credit_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit_apply: idempotency key % of user % % was used by a racing change',
            p_idempotency_key, p_user_id, p_credit_type
            USING ERRCODE = 'GHL01';
    END IF;

    IF p_outbox_domain IS NOT NULL THEN
        INSERT INTO cache_outbox (domain, cache_key, created_at)
        VALUES (p_outbox_domain, p_outbox_key, now())
        RETURNING id INTO o;
    END IF;
    RETURN QUERY SELECT 'applied'::text, b.balance, b.version, b.updated_at, p_delta, o;
END
$$;
-- +goose StatementEnd
DROP TRIGGER workflow_definitions_outbox_truncate ON workflow_definitions;
DROP TRIGGER workflow_definitions_outbox_delete ON workflow_definitions;
DROP TRIGGER workflow_definitions_outbox_update ON workflow_definitions;
DROP TRIGGER workflow_definitions_outbox_insert ON workflow_definitions;
DROP TRIGGER credit_balances_outbox_truncate ON credit_balances;
DROP TRIGGER credit_balances_outbox_delete ON credit_balances;
DROP TRIGGER credit_balances_outbox_update ON credit_balances;
DROP TRIGGER credit_balances_outbox_insert ON credit_balances;
DROP FUNCTION workflow_definitions_cache_outbox();
DROP FUNCTION credit_balances_cache_outbox();
DELETE FROM cache_outbox WHERE external OR whole_prefix;
ALTER TABLE cache_outbox DROP COLUMN whole_prefix, DROP COLUMN external;
DROP TABLE cache_namespaces;
