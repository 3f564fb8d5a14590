package integration_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/credits"
	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

type opKind int

const (
	opRead opKind = iota
	opAdd
	opDeduct
)

type histInput struct {
	user   int64
	kind   opKind
	amount int64
	minVer int64 // reads: the newest version acknowledged to any client before the read began
}

type histOutput struct {
	version, amount int64
	insufficient    bool
}

// TestCachedCreditsHistory records concurrent Balance/Add/Deduct calls on a
// few users from two instances and checks them with porcupine against a
// per-user register in which every change is atomic (versions 1, 2, …, each
// amount the previous one plus the delta) and a read returns some state
// that existed during the read and is at least as new as every change
// acknowledged before the read began.
func TestCachedCreditsHistory(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	prefix := testsvc.Prefix(t)
	insts := []*instance{
		newInstance(t, prefix, testsvc.Redis(t), nil),
		newInstance(t, prefix, testsvc.Redis(t), nil),
	}
	users := []int64{testsvc.NewID(), testsvc.NewID(), testsvc.NewID()}

	var (
		mu      sync.Mutex
		history []porcupine.Operation
		acked   = map[int64]int64{} // user → newest acknowledged version
	)
	base := time.Now()
	now := func() int64 { return time.Since(base).Nanoseconds() }
	// Run for runFor, and on until minOps operations are done (a busy
	// 2-core machine is slow), but never past maxRun.
	const clients, runFor, minOps, maxRun = 8, 3 * time.Second, 600, 30 * time.Second
	var ops atomic.Int64
	more := func() bool {
		el := time.Since(base)
		return el < runFor || (ops.Load() < minOps && el < maxRun)
	}
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 7))
			inst := insts[c%len(insts)]
			for more() {
				user := users[r.IntN(len(users))]
				in := histInput{user: user, amount: 1 + r.Int64N(9)}
				switch p := r.IntN(10); {
				case p < 6:
					in.kind = opRead
				case p < 8:
					in.kind = opAdd
				default:
					in.kind = opDeduct
				}
				mu.Lock()
				in.minVer = acked[user]
				call := now()
				mu.Unlock()

				var b credits.Balance
				var err error
				ch := credits.Change{UserID: user, Type: "enrichment", Amount: in.amount}
				switch in.kind {
				case opRead:
					b, err = inst.credits.Balance(ctx, user, "enrichment")
				case opAdd:
					b, err = inst.credits.Add(ctx, ch)
				case opDeduct:
					b, err = inst.credits.Deduct(ctx, ch)
				}
				out := histOutput{version: b.Version, amount: b.Amount}
				if errors.Is(err, credits.ErrInsufficient) {
					out.insufficient, err = true, nil
				}
				if err != nil {
					t.Errorf("client %d: %v", c, err)
					return
				}
				mu.Lock()
				ret := now()
				if in.kind != opRead && !out.insufficient {
					acked[user] = max(acked[user], out.version)
				}
				history = append(history, porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret})
				mu.Unlock()
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	require.False(t, t.Failed())

	res := porcupine.CheckOperationsTimeout(creditsModel(history), history, time.Minute)
	require.Equal(t, porcupine.Ok, res, "history of %d operations", len(history))
	reads := 0
	for _, op := range history {
		if op.Input.(histInput).kind == opRead {
			reads++
		}
	}
	hits := insts[0].cache.Stats().Hits + insts[1].cache.Stats().Hits
	t.Logf("porcupine: %d operations (%d reads, %d cache hits) on %d users from 2 instances: %s",
		len(history), reads, hits, len(users), res)
	require.Greater(t, len(history), 500, "enough operations to mean something")
}

// creditsModel is the per-user register. Since Postgres numbers the versions,
// the amount of each (user, version) is known from the successful changes;
// the state is just the current version.
func creditsModel(history []porcupine.Operation) porcupine.Model {
	amountAt := map[[2]int64]int64{}
	for _, op := range history {
		in, out := op.Input.(histInput), op.Output.(histOutput)
		if in.kind != opRead && !out.insufficient {
			amountAt[[2]int64{in.user, out.version}] = out.amount
		}
	}
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			byUser := map[int64][]porcupine.Operation{}
			for _, op := range h {
				u := op.Input.(histInput).user
				byUser[u] = append(byUser[u], op)
			}
			var parts [][]porcupine.Operation
			for _, p := range byUser {
				parts = append(parts, p)
			}
			return parts
		},
		Init: func() any { return int64(0) },
		Step: func(state, input, output any) (bool, any) {
			v, in, out := state.(int64), input.(histInput), output.(histOutput)
			current := amountAt[[2]int64{in.user, v}] // version 0: amount 0
			switch {
			case in.kind == opRead:
				ok := out.version >= in.minVer && out.version <= v &&
					out.amount == amountAt[[2]int64{in.user, out.version}]
				return ok, v
			case out.insufficient:
				return in.kind == opDeduct && current < in.amount, v
			default:
				delta := in.amount
				if in.kind == opDeduct {
					delta = -delta
				}
				return out.version == v+1 && out.amount == current+delta, out.version
			}
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(histInput), output.(histOutput)
			return fmt.Sprintf("%v(%d, %d) min %d → v%d=%d insufficient=%v", in.kind, in.user, in.amount, in.minVer, out.version, out.amount, out.insufficient)
		},
	}
}

// TestCreditsModelRejectsStaleRead shows the checker can fail: a read that
// begins after a change was acknowledged and returns the state before it.
func TestCreditsModelRejectsStaleRead(t *testing.T) {
	t.Parallel()
	write := porcupine.Operation{Input: histInput{user: 1, kind: opAdd, amount: 10}, Call: 0, Output: histOutput{version: 1, amount: 10}, Return: 2}
	stale := porcupine.Operation{ClientId: 1, Input: histInput{user: 1, kind: opRead, minVer: 1}, Call: 3, Output: histOutput{}, Return: 4}
	fresh := porcupine.Operation{ClientId: 1, Input: histInput{user: 1, kind: opRead, minVer: 1}, Call: 3, Output: histOutput{version: 1, amount: 10}, Return: 4}
	concurrent := porcupine.Operation{ClientId: 1, Input: histInput{user: 1, kind: opRead}, Call: 1, Output: histOutput{}, Return: 4}
	check := func(h ...porcupine.Operation) porcupine.CheckResult {
		return porcupine.CheckOperationsTimeout(creditsModel(h), h, 10*time.Second)
	}
	require.Equal(t, porcupine.Illegal, check(write, stale))
	require.Equal(t, porcupine.Ok, check(write, fresh))
	require.Equal(t, porcupine.Ok, check(write, concurrent), "a read concurrent with the change may see either state")
	wrongAmount := fresh
	wrongAmount.Output = histOutput{version: 1, amount: 11}
	require.Equal(t, porcupine.Illegal, check(write, wrongAmount))
}
