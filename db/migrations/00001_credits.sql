-- +goose Up
-- One row per (user, credit type). The balance can never go negative: the
-- CHECK is the last line of defence behind Deduct's conditional UPDATE.
CREATE TABLE credit_balances (
    user_id     bigint      NOT NULL CHECK (user_id > 0),
    credit_type text        NOT NULL,
    balance     bigint      NOT NULL CHECK (balance >= 0),
    version     bigint      NOT NULL CHECK (version >= 1),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, credit_type)
);

-- Every applied change, with the balance and version it produced, so that a
-- repeated idempotency key returns exactly the first result.
CREATE TABLE credit_ledger (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint      NOT NULL,
    credit_type     text        NOT NULL,
    delta           bigint      NOT NULL CHECK (delta <> 0),
    balance_after   bigint      NOT NULL CHECK (balance_after >= 0),
    version_after   bigint      NOT NULL CHECK (version_after >= 1),
    reason          text        NOT NULL DEFAULT '',
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX credit_ledger_idempotency_key
    ON credit_ledger (user_id, credit_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE INDEX credit_ledger_history ON credit_ledger (user_id, credit_type, id DESC);

-- +goose Down
DROP TABLE credit_ledger;
DROP TABLE credit_balances;
