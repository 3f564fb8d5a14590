package cachelayer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// readBatcher pipelines Fetch reads (SET key <lease> NX GET PX) when Redis
// is busy. Each breaker has one — the Cache's for a standalone or Sentinel
// Redis, each master's on a Cluster — so a pipeline goes to one master, and
// a master that hangs holds up (and fails, at their OpTimeout) only the
// reads of its own slots, never another shard's. Up to max reads — each a pipeline of one or more commands — are
// in flight at once; a read that arrives while max are in flight waits in
// a queue, and when one of them returns, its caller hands the whole queue
// (up to maxBatch reads) to the first read in it, which sends them in one
// pipeline: one write and one read of the socket for all of them, where
// each read on its own costs both (on loopback, a round trip's CPU is
// almost all syscalls). Reads of the same key in one pipeline send one
// command and share its reply.
//
// Freshness: every read in a pipeline arrived before the pipeline was
// sent, so its reply is no older than the read — sharing a reply never
// gives a read a value from before it began (guarantee 3). A command that
// was already sent is never joined.
//
// No goroutine is started per read or per pipeline: the caller that
// finishes hands on the queue; only a read that leaves (its deadline) just
// as it is made the sender sends its pipeline from a goroutine of its own.
type readBatcher struct {
	max      int // reads (single or pipelined) in flight at once; 0: no batching
	mu       sync.Mutex
	inflight int
	queue    []*readReq
}

// maxBatch bounds the reads of one pipeline: a longer queue is sent in
// several, one after another.
const maxBatch = 128

// States of a queued read (guarded by readBatcher.mu).
const (
	reqQueued  = iota // waiting in the queue
	reqLeading        // handed a batch to send (itself first)
	reqSent           // in a batch another read sends
	reqDone           // reply (or error) in res/err
	reqLeft           // its caller left before the reply (deadline)
)

// readReq is one read waiting in, or sent from, the queue. Requests are
// recycled (readReqs) by a caller that took its reply normally; one whose
// caller left may still be written by its batch's sender and is not.
type readReq struct {
	full, token string
	args        [7]any      // the command, pointing at full and token (no allocation per argument)
	cmd         redis.Cmder // instead, another command of the key (a fill), answered in itself
	state       int
	wake        chan struct{} // buffered 1: the reply is in, or this read leads a batch
	batch       []*readReq    // what a leading read sends
	res         string
	err         error
}

var readReqs = sync.Pool{New: func() any { return &readReq{wake: make(chan struct{}, 1)} }}

// errNotSent marks a read that left the queue before it was sent: it cannot
// have taken a lease. errQueueTimeout: it reached its OpTimeout there (a
// failure of a busy or stuck Redis); errQueueLeft: its caller's context
// ended.
var (
	errNotSent      = errors.New("cachelayer: read not sent")
	errQueueTimeout = fmt.Errorf("%w: timed out waiting to be sent (Redis busy)", errNotSent)
	errQueueLeft    = fmt.Errorf("%w: the caller left", errNotSent)
)

// sendRead sends the read of full with token, directly when fewer than max
// reads are in flight, else in the next pipeline; ctx bounds the wait
// (readOrLease has bounded it by OpTimeout). It returns what the key held,
// as the command would have.
func (c *Cache) sendRead(ctx context.Context, br *breaker, full, token string) (string, error) {
	return c.sendQueued(ctx, br, full, token, nil)
}

// sendCmd sends cmd, another command of the key full (a fill), like a read:
// at once while a slot is free, else in the next pipeline with the reads;
// its reply is in cmd, its error also returned (errQueueTimeout or the
// context's when it never got an answer).
func (c *Cache) sendCmd(ctx context.Context, br *breaker, full string, cmd redis.Cmder) error {
	_, err := c.sendQueued(ctx, br, full, "", cmd)
	return err
}

func (c *Cache) sendQueued(ctx context.Context, br *breaker, full, token string, cmd redis.Cmder) (string, error) {
	b := &br.reads
	b.mu.Lock()
	if b.inflight < b.max || b.max == 0 {
		b.inflight++
		b.mu.Unlock()
		defer c.readsDone(b) // also if a hook panics: a slot must never leak
		if cmd != nil {
			_ = c.rdb.Process(ctx, cmd)
			return "", cmd.Err()
		}
		return c.readCommand(ctx, full, token)
	}
	r := readReqs.Get().(*readReq)
	r.full, r.token, r.state, r.cmd = full, token, reqQueued, cmd
	if cmd == nil {
		r.args = [...]any{"set", &r.full, &r.token, "nx", "get", "px", c.leasePX}
	}
	b.queue = append(b.queue, r)
	b.mu.Unlock()
	if c.hookQueued != nil {
		c.hookQueued(full)
	}
	var why error
	select {
	case <-r.wake:
		return c.takeReply(ctx, b, r)
	case <-callerDone(ctx):
		why = context.Canceled // the caller's ctx ended (cancelled or past its own deadline)
	case <-ctx.Done():
		why = ctx.Err() // OpTimeout
	}
	b.mu.Lock()
	switch r.state {
	case reqQueued:
		b.removeLocked(r)
		b.mu.Unlock()
		if why == context.Canceled {
			return "", errQueueLeft
		}
		return "", errQueueTimeout
	case reqLeading: // made the sender as we leave: send without us
		r.state = reqLeft
		batch := r.batch
		b.mu.Unlock()
		entered := c.enter() // Close waits for it (bounded by OpTimeout)
		go func() {
			if entered {
				defer c.wg.Done()
			}
			c.sendBatch(b, batch, time.Now().Add(c.cfg.OpTimeout))
		}()
		return "", why
	case reqSent:
		r.state = reqLeft
		b.mu.Unlock()
		return "", why // sent: it may still take effect (a lost reply)
	}
	b.mu.Unlock() // reqDone: the reply beat the deadline
	return r.res, r.err
}

// takeReply is sendRead's part after r was woken: it sends r's batch if r
// leads one, and returns r's reply.
func (c *Cache) takeReply(ctx context.Context, b *readBatcher, r *readReq) (string, error) {
	b.mu.Lock()
	lead := r.state == reqLeading
	batch := r.batch
	b.mu.Unlock()
	if lead {
		// The first read queued has the earliest deadline of its batch
		// (each read's is OpTimeout after it began, or its caller's
		// sooner one): the batch is bounded by it, so that no caller waits
		// beyond its own deadline, detached from the caller's cancellation —
		// but never by less than one deadline window, so that a read woken
		// just at its deadline does not send its batch only to fail it.
		deadline, _ := ctx.Deadline()
		c.sendBatch(b, batch, later(deadline, time.Now().Add(c.deadlines.window)))
	}
	res, err := r.res, r.err
	*r = readReq{wake: r.wake} // its wake signal was taken: reusable as it is
	readReqs.Put(r)
	return res, err
}

// readCommand sends one read on its own.
func (c *Cache) readCommand(ctx context.Context, full, token string) (string, error) {
	r := &readArgs{full: full, token: token}
	r.args = [...]any{"set", &r.full, &r.token, "nx", "get", "px", c.leasePX}
	cmd := redis.NewStringCmd(ctx, r.args[:]...)
	_ = c.rdb.Process(ctx, cmd)
	return cmd.Result()
}

// sendBatch sends the reads of batch in one pipeline (a lone read as a
// plain command), bounded by deadline and detached from the callers (each
// waits on its own deadline), hands every read its reply, and passes the
// next queued batch on.
func (c *Cache) sendBatch(b *readBatcher, batch []*readReq, deadline time.Time) {
	defer c.readsDone(b) // also if a hook panics: a slot must never leak
	ctx, cancel := c.deadlines.readCtx(context.Background(), time.Until(deadline))
	if len(batch) == 1 {
		r := batch[0]
		if r.cmd != nil {
			_ = c.rdb.Process(ctx, r.cmd)
			r.err = r.cmd.Err()
		} else {
			cmd := redis.NewStringCmd(ctx, r.args[:]...)
			_ = c.rdb.Process(ctx, cmd)
			r.res, r.err = cmd.Result()
		}
		cancel()
		c.deliver(b, batch)
		return
	}
	// first[i] is the read whose command answers read i: the first of
	// its key in the batch.
	first := make([]int, len(batch))
	var index map[string]int // full key → first read, for long batches
	if len(batch) > 16 {
		index = make(map[string]int, len(batch))
	}
	cmds := make([]*redis.StringCmd, len(batch))
	send := make([]redis.Cmder, 0, len(batch))
	for i, r := range batch {
		first[i] = i
		if r.cmd != nil { // a fill: sent as it is, answered in itself
			send = append(send, r.cmd)
			continue
		}
		if index != nil {
			if j, ok := index[r.full]; ok && batch[j].cmd == nil {
				first[i] = j
			} else {
				index[r.full] = i
			}
		} else {
			for j := range i {
				if batch[j].full == r.full && batch[j].cmd == nil {
					first[i] = j
					break
				}
			}
		}
		if j := first[i]; j != i {
			cmds[i] = cmds[j]
			continue
		}
		cmds[i] = redis.NewStringCmd(ctx, r.args[:]...)
		send = append(send, cmds[i])
	}
	pipe := c.rdb.Pipeline()
	_ = pipe.BatchProcess(ctx, send...)
	_, _ = pipe.Exec(ctx)
	cancel()
	for i, r := range batch {
		if r.cmd != nil {
			r.err = r.cmd.Err()
			continue
		}
		res, err := cmds[i].Result()
		if j := first[i]; j != i && err == redis.Nil {
			// The key was empty and the first read of it took its lease:
			// to this read, the key holds that (this process's) lease.
			res, err = batch[j].token, nil
		}
		r.res, r.err = res, err
	}
	c.deliver(b, batch)
}

// deliver wakes the reads of a sent batch but its sender (whose caller is
// running it, or has left).
func (c *Cache) deliver(b *readBatcher, batch []*readReq) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, r := range batch {
		if r.state == reqLeft {
			continue
		}
		r.state = reqDone
		if i > 0 {
			r.wake <- struct{}{}
		}
	}
}

// readsDone ends one read in flight: the queue, if any, becomes the next
// batch, sent by its first read.
func (c *Cache) readsDone(b *readBatcher) {
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.inflight--
		b.mu.Unlock()
		return
	}
	n := min(len(b.queue), maxBatch)
	batch := make([]*readReq, n)
	copy(batch, b.queue)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	for _, r := range batch[1:] {
		r.state = reqSent
	}
	lead := batch[0]
	lead.state, lead.batch = reqLeading, batch
	b.mu.Unlock()
	lead.wake <- struct{}{}
}

// removeLocked takes r out of the queue.
func (b *readBatcher) removeLocked(r *readReq) {
	for i, q := range b.queue {
		if q == r {
			n := copy(b.queue[i:], b.queue[i+1:])
			b.queue[i+n] = nil
			b.queue = b.queue[:i+n]
			return
		}
	}
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
