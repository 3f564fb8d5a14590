package cachelayer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// readDeadlines bounds the hit path's read by OpTimeout without a timer per
// read. context.WithTimeout costs five allocations and a timer per call — a
// third of a warm hit's allocations. readCtx instead returns:
//
//   - the caller's ctx itself when its deadline is already within OpTimeout;
//   - otherwise a context whose Deadline is exactly now+OpTimeout (what
//     go-redis sets its socket deadlines from) and whose Done channel is
//     shared by every read whose deadline falls in the same short window
//     (OpTimeout/16), closed by one timer at the window's end — so a read
//     waiting for a pooled connection is released at most a window after its
//     deadline. The caller's cancellation does not close it: go-redis never
//     watches Done during a socket read anyway (only the deadline bounds
//     it), so what a cancelled caller loses is at most OpTimeout of a read it
//     no longer waits for — the queue of busy reads (sendRead) and Fetch
//     itself watch the caller's ctx and return at once. This is what a
//     request's context (cancellable, deadline seconds away) gets: a
//     context.WithTimeout per read was four allocations and a timer.
type readDeadlines struct {
	window time.Duration
	cur    atomic.Pointer[deadlineWindow] // the window most reads fall in now
	mu     sync.Mutex                     // serialises opening windows
}

// deadlineWindow is the Done channel of the reads whose deadline is at or
// before end (and after the previous window's end).
type deadlineWindow struct {
	end  int64 // unix nanoseconds
	done chan struct{}
}

func newReadDeadlines(opTimeout time.Duration) *readDeadlines {
	return &readDeadlines{window: max(opTimeout/16, time.Millisecond)}
}

// readCtx returns ctx bounded by timeout, and the function that releases it.
func (d *readDeadlines) readCtx(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	now := time.Now()
	deadline := now.Add(timeout)
	if dl, ok := ctx.Deadline(); ok && !dl.After(deadline) {
		return ctx, func() {}
	}
	return &windowCtx{Context: ctx, deadline: deadline, done: d.windowFor(deadline.UnixNano())}, func() {}
}

// callerDone returns the Done channel of the caller's context behind a
// read's ctx (from readCtx): ctx's own, or its parent's for a windowCtx,
// whose Done closes only at its deadline.
func callerDone(ctx context.Context) <-chan struct{} {
	if w, ok := ctx.(*windowCtx); ok {
		return w.Context.Done()
	}
	return ctx.Done()
}

// windowFor returns the Done channel of the window that ends at or after
// deadline (nanoseconds), opening it if need be.
func (d *readDeadlines) windowFor(deadline int64) <-chan struct{} {
	w := int64(d.window)
	end := (deadline + w - 1) / w * w
	if cur := d.cur.Load(); cur != nil && cur.end == end {
		return cur.done
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur := d.cur.Load(); cur != nil && cur.end >= end {
		if cur.end == end {
			return cur.done
		}
		// A read that began a moment earlier already opened a later
		// window; ours closes with it, at most one window later still.
		return cur.done
	}
	win := &deadlineWindow{end: end, done: make(chan struct{})}
	time.AfterFunc(time.Until(time.Unix(0, end)), func() { close(win.done) })
	d.cur.Store(win)
	return win.done
}

// windowCtx is a context that is never cancelled but by its deadline: Done
// closes at the end of the deadline's window, Err reports
// context.DeadlineExceeded from then on. Values come from the parent, whose
// cancellation it ignores (see readCtx).
type windowCtx struct {
	context.Context // the parent: its values
	deadline        time.Time
	done            <-chan struct{}
}

func (c *windowCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *windowCtx) Done() <-chan struct{}       { return c.done }
func (c *windowCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}
