-- name: CreditBalanceGet :one
SELECT user_id, credit_type, balance, version, updated_at
FROM credit_balances
WHERE user_id = @user_id::bigint AND credit_type = @credit_type::text;

-- name: CreditBalanceAdd :one
-- Upsert: creates the row at version 1 or adds to it. Overflow of bigint
-- raises 22003, which the store turns into ErrInvalid.
INSERT INTO credit_balances AS b (user_id, credit_type, balance, version, updated_at)
VALUES (@user_id::bigint, @credit_type::text, @amount::bigint, 1, now())
ON CONFLICT (user_id, credit_type) DO UPDATE
SET balance    = b.balance + EXCLUDED.balance,
    version    = b.version + 1,
    updated_at = now()
RETURNING user_id, credit_type, balance, version, updated_at;

-- name: CreditBalanceDeduct :one
-- One conditional UPDATE: under READ COMMITTED a concurrent deduct waits for
-- the row lock and re-checks the condition, so no update is lost and the
-- balance never goes negative. No row means insufficient credits.
UPDATE credit_balances
SET balance    = balance - @amount::bigint,
    version    = version + 1,
    updated_at = now()
WHERE user_id = @user_id::bigint
  AND credit_type = @credit_type::text
  AND balance >= @amount::bigint
RETURNING user_id, credit_type, balance, version, updated_at;

-- name: CreditLedgerInsert :one
-- ON CONFLICT DO NOTHING: a racing retry with the same idempotency key waits
-- for the first to commit and then inserts nothing (no row returned).
INSERT INTO credit_ledger (user_id, credit_type, delta, balance_after, version_after, reason, idempotency_key, created_at)
VALUES (@user_id::bigint, @credit_type::text, @delta::bigint, @balance_after::bigint, @version_after::bigint,
        @reason::text, sqlc.narg(idempotency_key)::text, now())
ON CONFLICT (user_id, credit_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, user_id, credit_type, delta, balance_after, version_after, reason, idempotency_key, created_at;

-- name: CreditLedgerGetByIdempotencyKey :one
SELECT id, user_id, credit_type, delta, balance_after, version_after, reason, idempotency_key, created_at
FROM credit_ledger
WHERE user_id = @user_id::bigint AND credit_type = @credit_type::text AND idempotency_key = @idempotency_key::text;

-- name: CreditLedgerList :many
SELECT id, user_id, credit_type, delta, balance_after, version_after, reason, idempotency_key, created_at
FROM credit_ledger
WHERE user_id = @user_id::bigint AND credit_type = @credit_type::text
ORDER BY id DESC
LIMIT @max_rows::int;
