// Package outbox makes cache invalidation durable: a change records the full
// cache key in the cache_outbox table in its own transaction
// ([Outbox.Record]); after commit the writer deletes the key
// ([Outbox.Invalidate]) and, when that delete succeeded, marks the row done.
// A sweeper in every cached repository deletes the keys of rows still
// waiting (Redis or the key's shard was down, the delete timed out, the
// writer died) and marks a row done only after its key's delete succeeded,
// however old the row is.
//
// # What it promises
//
//   - Nothing is counted done that did not reach Redis: while Redis, the
//     key's shard or its breaker is unavailable, the row keeps waiting and
//     the writing process reads the key from Postgres (it is pending), until
//     a sweep deletes it. Outcomes are per key: a key that fails holds back
//     no other key, in the same batch or behind it.
//   - Done rows are kept for MaxAge (the domain's TTL + 1 min). When the
//     Invalidator's TopologyEpoch changes (a failover may have promoted a
//     replica that missed an acknowledged delete, a breaker closed after an
//     outage), the sweeper deletes the keys of the done rows younger than
//     MaxAge again, within EpochPoll (250 ms) of noticing. An invalidation
//     whose delete overlapped the change is left waiting instead, so the
//     sweep deletes it on the new topology. Older done rows are removed, one
//     batched DELETE per sweep.
//   - Moot rows: only while its deletes fail does a sweeper drop rows without
//     a delete, and only rows it first saw waiting at least MaxAge ago. A row
//     is visible only once its transaction has committed, so that moment is
//     after the change, and the cache entry the row names has expired by
//     itself since. The row's created_at cannot tell: it is the start of the
//     writing transaction, which may have committed much later.
//   - An instance whose cache cannot reach Redis at all (no-cache mode, a
//     closed cache) still writes its rows, but counts none as delivered and
//     claims none (it only drops moot rows): instances that share the
//     database and have Redis delete their keys.
//
// # What it costs
//
// A write costs its INSERT (inside the write's transaction) and one Redis
// delete; marking done is batched: one UPDATE per FlushInterval (100 ms) or
// FlushMax (1000) rows, whichever comes first. A sweep costs one statement
// when no row waits (it also removes the old done rows), plus BEGIN, claim,
// mark and COMMIT per batch of waiting rows. The sweeper sweeps every
// Interval (1 s) while it knows of work — invalidations of this process
// still pending, rows found or deletes failed in its last sweep, re-deletes
// left to retry, its first sweep after New — at once when the
// TopologyEpoch changes (Redis back from an outage closes the breaker), and
// every IdleInterval (2 s) otherwise. So after an outage, rows any
// instance left (a dead writer's too) are swept within EpochPoll of the
// return by every instance whose cache saw the outage; rows another
// instance leaves while Redis is up (it died between commit and delete, or
// only it cannot reach Redis) are found within IdleInterval + Interval by
// an idle instance, and within Interval by one that is busy. The
// sweeper's own sweeps leave rows younger (by created_at) than twice
// FlushInterval to their writers, which are most likely marking them done,
// so that instances under load do not delete each other's keys twice; a
// waiting row of any age keeps the sweeper looking every Interval.
//
// The Outbox also remembers which keys this process's own invalidations are
// still pending for, so its reads of them can bypass the cache
// (read-your-writes during a Redis outage).
//
// # Writes made outside the library
//
// Triggers on the domains' tables (db/migrations/00006_external_writes.sql)
// write rows for every live namespace registered in cache_namespaces,
// marked external, and notify Channel(domain). Each Outbox registers its
// namespace (namespace.go: New registers it, sweeps refresh it, Close
// shortens it; until the writers in progress at the registration have
// ended, SkipRedis is true for every key) and LISTENs on a connection of
// its own (listen.go): a notification wakes the sweeper for a sweep of the
// external rows, which leaves the regular schedule as it was.
package outbox
