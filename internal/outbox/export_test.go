package outbox

import "context"

// Step runs one step of the sweeper now, as its ticker would (tests set
// Config.EpochPoll to an hour and drive the schedule with Step and a clock).
func (o *Outbox) Step(ctx context.Context) { o.step(ctx, false) }

// FlushDone marks the queued rows done now, as the marker's timer would.
func (o *Outbox) FlushDone(ctx context.Context) error { return o.flushDone(ctx) }
