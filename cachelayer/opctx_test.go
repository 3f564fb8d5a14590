package cachelayer

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestReadCtxBoundsWithoutATimerPerRead(t *testing.T) {
	t.Parallel()
	d := newReadDeadlines(40 * time.Millisecond)
	start := time.Now()
	ctx, cancel := d.readCtx(context.Background(), 40*time.Millisecond)
	defer cancel()
	if dl, ok := ctx.Deadline(); !ok || dl.Before(start.Add(40*time.Millisecond)) || dl.After(time.Now().Add(40*time.Millisecond)) {
		t.Fatalf("deadline %v, %v", dl, ok)
	}
	if ctx.Err() != nil {
		t.Fatal("done before its deadline")
	}
	ctx2, cancel2 := d.readCtx(context.Background(), 40*time.Millisecond)
	defer cancel2()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done never closed")
	}
	waited := time.Since(start)
	if waited < 40*time.Millisecond || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("done after %v with %v, want DeadlineExceeded after 40 ms", waited, ctx.Err())
	}
	<-ctx2.Done() // a read of the same moment shares (or follows) the window

	// A caller's earlier deadline is used as it is; a cancellable ctx gets
	// the read's deadline and window too (no timer of its own), and its
	// cancellation shows in callerDone, which the queue of busy reads
	// watches.
	parent, pcancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer pcancel()
	if got, _ := d.readCtx(parent, time.Second); got != parent {
		t.Fatal("a ctx with an earlier deadline was wrapped")
	}
	type key struct{}
	cctx, ccancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	got, gcancel := d.readCtx(cctx, time.Minute)
	defer gcancel()
	if _, ok := got.(*windowCtx); !ok || got.Value(key{}) != "v" {
		t.Fatalf("a cancellable ctx got %T (value %v), want a windowCtx keeping its values", got, got.Value(key{}))
	}
	ccancel()
	select {
	case <-callerDone(got):
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the caller's ctx did not show in callerDone")
	}
	if got.Err() != nil {
		t.Fatalf("the read's ctx ended with its caller (%v): it ends at its deadline only", got.Err())
	}
}
