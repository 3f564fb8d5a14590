-- +goose Up
-- credit_apply makes a credit change one statement, and so one round trip
-- in autocommit: the idempotency-key lookup, the balance change (Add: an
-- upsert; Deduct: one conditional UPDATE), the ledger row and, when
-- p_outbox_domain is not NULL, the cache_outbox row naming p_outbox_key
-- (the full Redis key), all in the statement's own transaction.
--
-- outcome is one of
--   'applied'      the change was applied: balance, version, updated_at are
--                  the new row; outbox_id is the outbox row (0: none asked);
--   'replay'       p_idempotency_key was used before: balance, version,
--                  updated_at are that change's result and first_delta its
--                  delta (the caller compares it with p_delta: another
--                  amount or direction is a conflict); nothing written;
--   'insufficient' a deduct found less than -p_delta; nothing written.
-- No column is ever NULL.
--
-- A racing change with the same idempotency key that commits while this one
-- waits for the balance row lock makes the ledger insert find its row. The
-- balance has been changed already in this statement, so the function raises
-- SQLSTATE GHL01 instead of returning: the whole statement (its own
-- transaction) rolls back, and the caller reads the winner's result (one
-- more round trip, only in that race). A writable CTE could not do this:
-- all of its parts run, so the balance change would stand without its
-- ledger row (a double credit).
--
-- Under READ COMMITTED every statement in the function takes a new
-- snapshot, so the lookups after a lock wait see what the waited-for
-- change committed.
-- +goose StatementBegin
CREATE FUNCTION credit_apply(
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

-- +goose Down
DROP FUNCTION credit_apply(bigint, text, bigint, text, text, text, text);
