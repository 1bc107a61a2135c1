package rotation_test

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/rotation"
)

// shared makes an engine split re-wraps into ranges of size DEKs.
func shared(size int) func(*rotation.Config) {
	return func(c *rotation.Config) { c.RangeSize = size }
}

// rangeWriters returns, per actor, how many range batches (rewrap.progress
// events naming a range) of key's rotations it wrote.
func rangeWriters(t *testing.T, e *env, key string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, ev := range e.audit(t, key) {
		if ev.Type == rekey.AuditRewrapProgress && strings.Contains(ev.Reason, "(range ") {
			out[ev.Actor]++
		}
	}
	return out
}

// ranges returns the re-wrap ranges of key's only rotation.
func ranges(t *testing.T, e *env, key string) []rekey.RewrapRange {
	t.Helper()
	rs := e.rotations(t, key)
	if len(rs) != 1 {
		t.Fatalf("rotations of %s = %d, want 1", key, len(rs))
	}
	got, err := e.mstore.ListRewrapRanges(e.ctx, rs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// checkOneRotation checks that key was rotated exactly once, to version
// 2, with every DEK on it and unwrapping to its plaintext.
func checkOneRotation(t *testing.T, e *env, key string, deks int) {
	t.Helper()
	rs := e.rotations(t, key)
	if len(rs) != 1 || rs[0].State != rekey.RotationDone || rs[0].ToVersion != 2 {
		t.Fatalf("rotations = %+v, want one done rotation to version 2", rs)
	}
	if v := e.backendVersion(t, key); v != 2 {
		t.Fatalf("backend version = %d, want 2 (exactly one new version)", v)
	}
	if c := e.counts(t, key); c[2] != int64(deks) || len(c) != 1 {
		t.Fatalf("counts = %v, want all %d DEKs on version 2", c, deks)
	}
	if n := e.countAudit(t, key, rekey.AuditRotationStarted); n != 1 {
		t.Fatalf("rotation.started events = %d, want 1", n)
	}
	e.checkDEKs(t, key)
}

// Two workers share one key's re-wrap: the key's holder splits it, the
// other re-wraps the ranges nobody holds, and the holder commits once all
// are finished. Each range's batches are audited under its worker.
func TestSharedRewrap_TwoWorkers(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 400)
	e.makeDue(t, "k")
	a := e.engine(t, shared(40)) // 10 ranges
	b := e.engine(t, shared(40))
	started, helped := make(chan struct{}), make(chan struct{})
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBatchCommit, 1, func() error {
		close(started) // A wrote its first batch of range 0
		<-helped       // and holds the range while B works
		return nil
	}))
	var (
		wg   sync.WaitGroup
		aErr error
	)
	wg.Go(func() { _, aErr = a.Rotate(e.ctx, "k", rekey.ReasonManual, "") })
	<-started
	var shared int64
	for deadline := time.Now().Add(10 * time.Second); shared == 0 && time.Now().Before(deadline); {
		n, err := b.ShareRewrap(e.ctx, "k")
		if err != nil {
			t.Errorf("ShareRewrap: %v", err)
			break
		}
		shared += n
		if shared == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	close(helped)
	wg.Wait()
	if aErr != nil {
		t.Fatalf("Rotate: %v", aErr)
	}
	if shared < 40*8 {
		t.Fatalf("B re-wrapped %d DEKs, want at least the 8 ranges A did not hold (320)", shared)
	}
	w := rangeWriters(t, e, "k")
	if w[a.Owner()] == 0 || w[b.Owner()] == 0 || len(w) != 2 {
		t.Fatalf("range batches by actor = %v: want both workers", w)
	}
	rs := ranges(t, e, "k")
	if len(rs) != 10 {
		t.Fatalf("ranges = %d, want 10", len(rs))
	}
	var done int64
	for _, rg := range rs {
		if !rg.Finished {
			t.Fatalf("range %d not finished: %+v", rg.Index, rg)
		}
		done += rg.Done
	}
	if done != 400 || e.rotations(t, "k")[0].Done < 400 {
		t.Fatalf("ranges re-wrapped %d, rotation done %d: want 400", done, e.rotations(t, "k")[0].Done)
	}
	checkOneRotation(t, e, "k", 400)
}

// A worker that died holding a range leaves its lease to expire; the key's
// holder then takes the range over and finishes the rotation.
func TestSharedRewrap_DeadRangeHolderTakenOver(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 200)
	e.makeDue(t, "k")
	a := e.engine(t, shared(40), func(c *rotation.Config) { c.LeaseTTL = time.Minute })
	ghost := "ghost-host-1" // not of this host: only expiry frees its lease
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBatchCommit, 1, func() error {
		// Range 0 is A's; the ghost grabs range 2 and dies at once.
		r := e.openRotations(t, "k")[0]
		if _, err := e.store.AcquireLease(e.ctx, rekey.RangeLeaseKey(r.ID, 2), ghost, time.Minute, e.clock.Now()); err != nil {
			return err
		}
		return nil
	}))
	done := make(chan error, 1)
	go func() { _, err := a.Rotate(e.ctx, "k", rekey.ReasonManual, ""); done <- err }()
	var err error
	for waiting := true; waiting; {
		select {
		case err = <-done:
			waiting = false
		case <-time.After(20 * time.Millisecond):
			e.clock.Advance(10 * time.Second) // the ghost's lease runs out
		}
	}
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	rs := ranges(t, e, "k")
	if !rs[2].Finished || rs[2].Done != 40 {
		t.Fatalf("range 2 = %+v, want finished by the takeover with 40 DEKs", rs[2])
	}
	var byA bool
	for _, ev := range e.audit(t, "k") {
		byA = byA || ev.Actor == a.Owner() && strings.Contains(ev.Reason, "(range 3 of 5 finished)")
	}
	if !byA {
		t.Fatal("range 3 of 5 (index 2) was not finished by the worker that took it over")
	}
	if w := rangeWriters(t, e, "k"); w[ghost] != 0 || w[a.Owner()] == 0 {
		t.Fatalf("range batches by actor = %v", w)
	}
	checkOneRotation(t, e, "k", 200)
}

// A worker paused past its range lease (its key lease taken over
// meanwhile) writes nothing when it wakes: no DEK, no checkpoint, no audit
// event. The new holder finishes the rotation.
func TestSharedRewrap_PausedWorkerWritesNothing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 200)
	e.makeDue(t, "k")
	a := e.engine(t, shared(40))
	b := e.engine(t, shared(40))
	var (
		auditAtTakeover int
		countsAt        map[int]int64
		doneAt          int64
	)
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBackend, 2, func() error {
		// A re-wrapped a batch of its range but has not written it: it
		// pauses past its leases and B takes the key over.
		e.clock.Advance(time.Hour)
		if _, err := e.store.AcquireLease(e.ctx, "k", b.Owner(), time.Minute, e.clock.Now()); err != nil {
			return err
		}
		auditAtTakeover = len(e.audit(t, "k"))
		countsAt = e.counts(t, "k")
		doneAt = e.openRotations(t, "k")[0].Done
		return nil
	}))
	kr := keyReport(t, a.RunCycle(e.ctx), "k")
	if !errors.Is(kr.Err, rekey.ErrFenced) {
		t.Fatalf("paused worker report = %+v, want fenced", kr)
	}
	if n := len(e.audit(t, "k")); n != auditAtTakeover {
		t.Fatalf("paused worker wrote %d audit events after the takeover", n-auditAtTakeover)
	}
	if c := e.counts(t, "k"); c[1] != countsAt[1] || c[2] != countsAt[2] {
		t.Fatalf("counts = %v, were %v at the takeover: the paused batch must not be written", c, countsAt)
	}
	if d := e.openRotations(t, "k")[0].Done; d != doneAt {
		t.Fatalf("rotation done = %d, was %d at the takeover", d, doneAt)
	}
	// B has the key's lease now (acquired by hand above, as B's own
	// cycle would): it resumes the rotation and finishes every range.
	if err := e.store.ReleaseLease(e.ctx, mustLease(t, e, "k")); err != nil {
		t.Fatal(err)
	}
	if rep := b.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("new owner cycle = %+v", rep)
	}
	checkOneRotation(t, e, "k", 200)
}

func mustLease(t *testing.T, e *env, key string) rekey.Lease {
	t.Helper()
	l, err := e.store.GetLease(e.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// The cycle of a worker that finds a key leased by another helps with its
// shared re-wrap (outcome shared), and a rotation too small to split is
// never split.
func TestSharedRewrap_CycleHelpsAndSmallKeysStayWhole(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "big", testPolicy())
	e.createKey(t, "small", testPolicy())
	e.addDEKs(t, "big", 300)
	e.addDEKs(t, "small", 50)
	e.makeDue(t, "big")
	a := e.engine(t, shared(30))
	b := e.engine(t, shared(30))
	helped := make(chan struct{})
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBatchCommit, 1, func() error {
		<-helped
		return nil
	}))
	var wg sync.WaitGroup
	var aErr error
	wg.Go(func() { _, aErr = a.Rotate(e.ctx, "big", rekey.ReasonManual, "") })
	// Wait until A split the re-wrap, then run B's cycle.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if rs := e.openRotations(t, "big"); len(rs) == 1 {
			if got, _ := e.mstore.ListRewrapRanges(e.ctx, rs[0].ID); len(got) > 0 {
				break
			}
		}
	}
	rep := b.RunCycle(e.ctx)
	close(helped)
	wg.Wait()
	if aErr != nil {
		t.Fatal(aErr)
	}
	if kr := keyReport(t, rep, "big"); kr.Outcome != rotation.OutcomeShared || kr.Rewrapped < 30 {
		t.Fatalf("B's report for big = %+v, want shared with DEKs re-wrapped", kr)
	}
	checkOneRotation(t, e, "big", 300)
	// small was due too: B's cycle rotated it, whole.
	if kr := keyReport(t, rep, "small"); kr.Outcome != rotation.OutcomeRotated {
		t.Fatalf("B's report for small = %+v", kr)
	}
	rs := e.rotations(t, "small")
	if len(rs) != 1 {
		t.Fatalf("rotations of small = %d", len(rs))
	}
	if got, _ := e.mstore.ListRewrapRanges(e.ctx, rs[0].ID); len(got) != 0 {
		t.Fatalf("a rotation of 50 DEKs with ranges of 30 was split into %d ranges", len(got))
	}
	checkOneRotation(t, e, "small", 50)
}

// One engine with RangeWorkers 3 re-wraps ranges of one rotation at the
// same time (a batch of a second range commits while the first range's
// worker waits after its batch), and the rotation ends as with one: every
// DEK re-wrapped once, every range finished, one commit.
func TestSharedRewrap_RangeWorkersAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 400)
	a := e.engine(t, shared(40), func(c *rotation.Config) { c.RangeWorkers = 3 }) // 10 ranges
	var (
		hits   atomic.Int64
		second = make(chan struct{})
		once   sync.Once
	)
	rotation.SetTestHook(a, func(name string) error {
		if name != failpoint.RewrapAfterBatchCommit {
			return nil
		}
		if hits.Add(1) == 1 {
			select {
			case <-second:
				return nil
			case <-time.After(10 * time.Second):
				return errors.New("no other range's batch committed while the first range waited: ranges are not re-wrapped at once")
			}
		}
		once.Do(func() { close(second) })
		return nil
	})
	r, err := a.Rotate(e.ctx, "k", rekey.ReasonManual, "")
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if r.Done != 400 {
		t.Fatalf("rotation re-wrapped %d DEKs, want 400", r.Done)
	}
	rs := ranges(t, e, "k")
	if len(rs) != 10 {
		t.Fatalf("ranges = %d, want 10", len(rs))
	}
	for _, rg := range rs {
		if !rg.Finished {
			t.Fatalf("range %d not finished", rg.Index)
		}
	}
	checkOneRotation(t, e, "k", 400)
}

// A failure in one of several range workers stops the others after their
// batch in progress and fails the rotation's pass; the next try resumes
// every range at its cursor and the rotation ends once, with every DEK.
func TestSharedRewrap_RangeWorkersStopTogether(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 400)
	a := e.engine(t, shared(40), func(c *rotation.Config) { c.RangeWorkers = 3; c.BatchSize = 20 })
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBatchCommit, 4, func() error { return errTest }))
	if _, err := a.Rotate(e.ctx, "k", rekey.ReasonManual, ""); !errors.Is(err, errTest) {
		t.Fatalf("Rotate with a failing range batch = %v, want the failure", err)
	}
	unfinished := 0
	for _, rg := range ranges(t, e, "k") {
		if !rg.Finished {
			unfinished++
		}
	}
	if unfinished == 0 {
		t.Fatal("every range finished after the failure: the other workers did not stop")
	}
	rotation.SetTestHook(a, nil)
	if rep := a.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("the next cycle = %+v, want the rotation resumed and done", rep)
	}
	checkOneRotation(t, e, "k", 400)
}

// Several range workers share the engine's Concurrency: the backend never
// has more calls of the re-wrap in flight than that (each worker alone
// would use all of it).
func TestSharedRewrap_RangeWorkersShareConcurrency(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 600)
	counting := &onlyKMS{KMS: e.kms, delay: 300 * time.Microsecond}
	a := e.engine(t, shared(60), func(c *rotation.Config) {
		c.Backends = map[string]rekey.KMS{e.backend: counting}
		c.RangeWorkers, c.Concurrency, c.BatchSize = 4, 3, 30
	})
	if _, err := a.Rotate(e.ctx, "k", rekey.ReasonManual, ""); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if m := counting.maxInFlight.Load(); m > 3 || m < 1 {
		t.Fatalf("max backend calls in flight = %d with 4 range workers, want 1..3 (Concurrency)", m)
	}
	checkOneRotation(t, e, "k", 600)
}
