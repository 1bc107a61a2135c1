package rotation_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/rotation"
)

// One transaction per batch (issue 7): a batch's DEKs and the rotation's
// checkpoint commit together (CommitBatch), so deks_done always equals the
// DEKs actually on the new version: after every batch, after a batch write
// that failed (nothing written), and when the checkpoint write on its own
// (AdvanceRotation) fails, which once came right after the DEKs were
// written and left deks_done short by a batch.
func TestOneTransactionPerBatch_DoneMatchesDEKs(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 45) // five batches of 10
	e.makeDue(t, "k")
	eng := e.engine(t)

	// agree reports whether the open rotation's Done equals the DEKs on
	// its target version.
	agree := func() error {
		rs, err := e.store.ListRotations(e.ctx, rekey.RotationQuery{Key: "k", OpenOnly: true})
		if err != nil || len(rs) != 1 {
			return fmt.Errorf("open rotations %+v, %v", rs, err)
		}
		c, err := e.store.CountDEKs(e.ctx, "k")
		if err != nil {
			return err
		}
		if r := rs[0]; r.ToVersion > 0 && r.Done != c[r.ToVersion] {
			return fmt.Errorf("rotation %s (%s): deks_done %d, but %d DEKs are on v%d", r.ID, r.State, r.Done, c[r.ToVersion], r.ToVersion)
		}
		return nil
	}
	var checked atomic.Int64
	rotation.SetTestHook(eng, func(name string) error {
		if name != failpoint.RewrapAfterBatchCommit && name != failpoint.RewrapAfterBackend {
			return nil
		}
		checked.Add(1)
		if err := agree(); err != nil {
			t.Errorf("at %s: %v", name, err)
		}
		return nil
	})

	// 1. The third batch's write fails: nothing of it is written.
	var commits atomic.Int64
	e.mstore.Fail = func(op string) error {
		if op == "CommitBatch" && commits.Add(1) == 3 {
			return errTest
		}
		return nil
	}
	if kr := keyReport(t, eng.RunCycle(e.ctx), "k"); kr.Outcome != rotation.OutcomeFailed {
		t.Fatalf("cycle with a failing batch write = %+v", kr)
	}
	e.mstore.Fail = nil
	if err := agree(); err != nil {
		t.Fatalf("after the failed batch write: %v", err)
	}
	if r := e.openRotations(t, "k")[0]; r.Done != 20 {
		t.Fatalf("after two batches: deks_done %d, want 20", r.Done)
	}

	// 2. Every checkpoint written on its own fails: the batches still
	// commit (with their checkpoint), and the rotation stops at commit.
	e.mstore.Fail = func(op string) error {
		if op == "AdvanceRotation" {
			return errTest
		}
		return nil
	}
	if kr := keyReport(t, eng.RunCycle(e.ctx), "k"); kr.Outcome != rotation.OutcomeFailed {
		t.Fatalf("cycle with failing AdvanceRotation = %+v", kr)
	}
	e.mstore.Fail = nil
	if err := agree(); err != nil {
		t.Fatalf("after the failed commit: %v", err)
	}
	if r := e.openRotations(t, "k")[0]; r.Done != 45 || r.State != rekey.RotationRewrapping {
		t.Fatalf("after every batch: %+v, want 45 done, still rewrapping", r)
	}

	// 3. Healthy again: the rotation finishes with the right count.
	if rep := eng.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("resume = %+v", rep)
	}
	rs := e.rotations(t, "k")
	if len(rs) != 1 || rs[0].State != rekey.RotationDone || rs[0].Done != 45 || e.counts(t, "k")[2] != 45 {
		t.Fatalf("rotations = %+v, counts %v", rs, e.counts(t, "k"))
	}
	if checked.Load() < 5 {
		t.Fatalf("only %d checks ran", checked.Load())
	}
	e.checkDEKs(t, "k")
}
