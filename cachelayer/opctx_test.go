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

	// A caller's earlier deadline is used as it is; a cancellable ctx keeps
	// its cancellation.
	parent, pcancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer pcancel()
	if got, _ := d.readCtx(parent, time.Second); got != parent {
		t.Fatal("a ctx with an earlier deadline was wrapped")
	}
	cctx, ccancel := context.WithCancel(context.Background())
	got, gcancel := d.readCtx(cctx, time.Minute)
	defer gcancel()
	ccancel()
	select {
	case <-got.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the caller's ctx did not end the read's")
	}
}
