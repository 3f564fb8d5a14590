-- +goose Up
-- Cache keys to invalidate, written in the same transaction as the change
-- that made them stale. cache_key is the full Redis key (prefix included), so
-- any instance can sweep it whatever its own prefix. domain selects the
-- sweeper (each domain drops rows older than its own TTL + 1 minute).
CREATE TABLE cache_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain     text        NOT NULL,
    cache_key  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cache_outbox_oldest ON cache_outbox (domain, created_at, id);

-- +goose Down
DROP TABLE cache_outbox;
