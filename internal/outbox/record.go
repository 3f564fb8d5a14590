package outbox

import "sync/atomic"

// This file is the seam for stores that write their outbox row in the same
// statement as the change (one round trip, no transaction of their own)
// instead of through [Outbox.Record]: they need the row's column values,
// and an Invalidation for a statement whose reply was lost.

// Domain returns the cache_outbox.domain the Outbox writes and sweeps; ""
// on a nil *Outbox (a store with no cache in front writes no row).
func (o *Outbox) Domain() string {
	if o == nil {
		return ""
	}
	return o.cfg.Domain
}

// FullKey returns key (unprefixed, as the domain builds it) as the cache
// stores it, the cache_outbox.cache_key of its row; "" on a nil *Outbox.
func (o *Outbox) FullKey(key string) string {
	if o == nil {
		return ""
	}
	return o.inv.FullKey(key)
}

// unknownIDs numbers the Invalidations of rows whose id is unknown: -1, -2, …
var unknownIDs atomic.Int64

// Unrecorded returns the Invalidation of key (unprefixed) for a write whose
// outcome is unknown (its reply was lost): its row exists exactly if the
// write committed, but its id never arrived. The Invalidation has a
// negative ID of its own in this process, which no row has, so
// [Outbox.Invalidate] deletes the key and marks it pending as for a known
// row; marking "its" row done marks nothing (the committed row, if any, is
// the sweeper's), and a pending mark left by a failed delete clears at the
// next sweep (no such row waits). On a nil *Outbox it returns the zero
// Invalidation.
func (o *Outbox) Unrecorded(key string) Invalidation {
	if o == nil {
		return Invalidation{}
	}
	return Invalidation{ID: unknownIDs.Add(-1), Key: o.inv.FullKey(key)}
}
