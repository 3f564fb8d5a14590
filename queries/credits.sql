-- name: CreditBalanceGet :one
SELECT user_id, credit_type, balance, version, updated_at
FROM credit_balances
WHERE user_id = @user_id::bigint AND credit_type = @credit_type::text;

-- name: CreditApply :one
-- The whole change in one statement (db/migrations/00004_write_path.sql):
-- outcome 'applied', 'replay' or 'insufficient'; SQLSTATE GHL01 when a
-- racing change took the idempotency key (nothing written).
SELECT r.outcome::text AS outcome, r.balance::bigint AS balance, r.version::bigint AS version,
       r.updated_at::timestamptz AS updated_at, r.first_delta::bigint AS first_delta,
       r.outbox_id::bigint AS outbox_id
FROM credit_apply(@user_id::bigint, @credit_type::text, @delta::bigint, @reason::text,
                  sqlc.narg(idempotency_key)::text, sqlc.narg(outbox_domain)::text,
                  sqlc.narg(outbox_key)::text) AS r;

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
