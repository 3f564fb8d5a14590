-- +goose Up
-- An outbox row is no longer removed once its key's delete succeeded: it is
-- marked done and kept for the domain's TTL + 1 min, so that after a Redis
-- topology change (a failover may promote a replica that missed an
-- acknowledged UNLINK) a sweeper can delete the keys of recent
-- invalidations once more. done_at IS NULL: the row still waits for its
-- delete (what sweepers claim and what depth counts).
ALTER TABLE cache_outbox ADD COLUMN done_at timestamptz;

-- Waiting rows, claimed in id order; small however long done rows are kept.
DROP INDEX cache_outbox_oldest;
CREATE INDEX cache_outbox_waiting ON cache_outbox (domain, id) WHERE done_at IS NULL;
-- Done rows, by when they were done: re-deletes page through the recent
-- ones, cleanup removes the old ones.
CREATE INDEX cache_outbox_done ON cache_outbox (domain, done_at, id) WHERE done_at IS NOT NULL;

-- +goose Down
DROP INDEX cache_outbox_done;
DROP INDEX cache_outbox_waiting;
DELETE FROM cache_outbox WHERE done_at IS NOT NULL;
ALTER TABLE cache_outbox DROP COLUMN done_at;
CREATE INDEX cache_outbox_oldest ON cache_outbox (domain, created_at, id);
