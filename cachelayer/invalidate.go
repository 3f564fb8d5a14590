package cachelayer

import "context"

// DeleteFullEach is DeleteFull with one outcome per key: errs[i] is nil
// only when fullKeys[i]'s delete reached Redis, so that a caller keeping a
// durable record of each invalidation (an outbox sweeper) can remove the
// records whose keys were deleted and keep the others. It returns nil when
// every key was deleted. Keys are validated as DeleteFull validates them.
func (c *Cache) DeleteFullEach(ctx context.Context, fullKeys []string) (errs []error) {
	if len(fullKeys) == 0 {
		return nil
	}
	err := c.DeleteFull(ctx, fullKeys...)
	if err == nil {
		return nil
	}
	errs = make([]error, len(fullKeys))
	for i := range errs {
		errs[i] = err
	}
	return errs
}

// TopologyEpoch is a number that changes whenever the cache sees its Redis
// change in a way that may have lost acknowledged deletes: a new master, a
// changed replication id, a breaker closing after an outage. A caller that
// keeps recent invalidations (an outbox) deletes their keys again when it
// sees the number change.
func (c *Cache) TopologyEpoch() uint64 { return uint64(c.st.recoveries.Load()) }
