package rotation_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/rotation"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	if _, err := rotation.New(rotation.Config{}); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Fatalf("New without store = %v, want ErrInvalidArgument", err)
	}
	e := setup(t)
	if _, err := rotation.New(rotation.Config{Store: e.store, BatchSize: -1}); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Fatalf("New with negative batch = %v", err)
	}
}

// A scheduled rotation end to end: every DEK on the new version, the audit
// story in order, and after the grace the old version retired.
func TestScheduledRotationEndToEnd(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "payments", testPolicy())
	ids := e.addDEKs(t, "payments", 95)
	eng := e.engine(t)

	// Not due yet: nothing happens.
	rep := eng.RunCycle(e.ctx)
	if kr := keyReport(t, rep, "payments"); kr.Outcome != rotation.OutcomeIdle || !rep.OK() {
		t.Fatalf("cycle before due: %+v", kr)
	}

	e.makeDue(t, "payments")
	start := e.clock.Now()
	rep = eng.RunCycle(e.ctx)
	kr := keyReport(t, rep, "payments")
	if kr.Outcome != rotation.OutcomeRotated || kr.FromVersion != 1 || kr.ToVersion != 2 || kr.Rewrapped != 95 || !rep.OK() {
		t.Fatalf("report = %+v", kr)
	}
	if got := e.counts(t, "payments"); got[2] != 95 || len(got) != 1 {
		t.Fatalf("DEK counts = %v, want all 95 on v2", got)
	}
	e.checkDEKs(t, "payments")
	k := e.key(t, "payments")
	if k.ActiveVersion != 2 || !k.ExpiresAt.Equal(start.Add(30*rekey.Day)) {
		t.Fatalf("key after commit = v%d expires %v", k.ActiveVersion, k.ExpiresAt)
	}
	vs := e.versions(t, "payments")
	if vs[1].State != rekey.VersionPendingRetirement || !vs[1].RetireAfter.Equal(start.Add(2*rekey.Day)) || vs[2].State != rekey.VersionActive {
		t.Fatalf("versions after commit = %+v", vs)
	}
	rs := e.rotations(t, "payments")
	if len(rs) != 1 || rs[0].State != rekey.RotationDone || rs[0].Done != 95 || rs[0].Total != 95 || rs[0].Reason != rekey.ReasonScheduled {
		t.Fatalf("rotation = %+v", rs)
	}
	if n := e.countAudit(t, "payments", rekey.AuditRewrapProgress); n != 11 {
		t.Fatalf("rewrap.progress events = %d, want one at the start and one per batch (11)", n)
	}

	// Grace not over: the old version stays pending.
	e.clock.Advance(rekey.Day)
	eng.RunCycle(e.ctx)
	if st := e.versions(t, "payments")[1].State; st != rekey.VersionPendingRetirement {
		t.Fatalf("v1 within grace = %s", st)
	}
	e.clock.Advance(rekey.Day + time.Second)
	rep = eng.RunCycle(e.ctx)
	if kr := keyReport(t, rep, "payments"); len(kr.Retired) != 1 || kr.Retired[0] != 1 {
		t.Fatalf("report after grace = %+v", kr)
	}
	if st := e.versions(t, "payments")[1].State; st != rekey.VersionRetired {
		t.Fatalf("v1 after grace = %s", st)
	}
	if _, err := e.kms.Unwrap(e.ctx, k.BackendRef, 1, []byte("x")); err == nil {
		t.Fatal("backend still uses retired v1")
	}
	e.checkDEKs(t, "payments")

	want := []rekey.AuditType{
		rekey.AuditKeyCreated, rekey.AuditRotationStarted, rekey.AuditVersionCreated, rekey.AuditRewrapProgress,
		rekey.AuditRotationCommitted, rekey.AuditVersionPendingRetirement, rekey.AuditRotationCompleted, rekey.AuditVersionRetired,
	}
	if got := e.auditTypes(t, "payments"); !equalTypes(got, want) {
		t.Fatalf("audit story =\n %v\nwant\n %v", got, want)
	}
	for _, ev := range e.audit(t, "payments")[1:] {
		if ev.Actor != eng.Owner() || ev.Key != "payments" {
			t.Fatalf("event %s: actor %q key %q", ev.Type, ev.Actor, ev.Key)
		}
		if ev.Type != rekey.AuditVersionRetired && ev.RotationID != rs[0].ID {
			t.Fatalf("event %s has rotation id %q", ev.Type, ev.RotationID)
		}
	}
	_ = ids
	// Logs carry the article's fields and never key material.
	logs := e.logs.String()
	for _, f := range []string{`"key_id":"payments"`, `"from_version":1`, `"to_version":2`, `"deks_rotated":95`, `"duration_ms"`, `"status":"success"`} {
		if !strings.Contains(logs, f) {
			t.Errorf("logs lack %s", f)
		}
	}
}

func equalTypes(a, b []rekey.AuditType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Rule 1: the store, not memory, keeps one open rotation per key; a second
// claim resumes the open one.
func TestRule1_OneOpenRotationPerKey(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 25)
	e.makeDue(t, "k")
	// A first worker claims, then fails right after the claim.
	a := e.engine(t, fp("rotation.after_claim=error"))
	if kr := keyReport(t, a.RunCycle(e.ctx), "k"); kr.Outcome != rotation.OutcomeFailed {
		t.Fatalf("first cycle = %+v", kr)
	}
	open := e.openRotations(t, "k")
	if len(open) != 1 || open[0].State != rekey.RotationClaimed {
		t.Fatalf("open rotations = %+v", open)
	}
	// A manual rotation on another worker must finish that one before it
	// starts its own: never two open at once.
	b := e.engine(t)
	r, err := b.Rotate(e.ctx, "k", "", "ticket 42")
	if err != nil {
		t.Fatal(err)
	}
	rs := e.rotations(t, "k")
	if len(rs) != 2 || rs[0].ID != r.ID || rs[1].ID != open[0].ID || rs[1].State != rekey.RotationDone || r.State != rekey.RotationDone {
		t.Fatalf("rotations = %+v", rs)
	}
	if r.Reason != rekey.ReasonManual || r.Note != "ticket 42" || r.FromVersion != 2 || r.ToVersion != 3 {
		t.Fatalf("manual rotation = %+v", r)
	}
	if got := e.backendVersion(t, "k"); got != 3 {
		t.Fatalf("backend version = %d, want 3", got)
	}
	if len(e.openRotations(t, "k")) != 0 {
		t.Fatal("a rotation is still open")
	}
	e.checkDEKs(t, "k")
}

// Rules 1 and 7: two engines racing on one store rotate a key exactly once.
func TestRule1_TwoEnginesRotateOnce(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for _, k := range []string{"a", "b", "c"} {
		e.createKey(t, k, testPolicy())
		e.addDEKs(t, k, 30)
	}
	e.makeDue(t, "a")
	engines := []*rotation.Engine{e.engine(t), e.engine(t)}
	var wg sync.WaitGroup
	for _, eng := range engines {
		wg.Go(func() {
			for range 3 {
				eng.RunCycle(e.ctx)
			}
		})
	}
	wg.Wait()
	for _, k := range []string{"a", "b", "c"} {
		if got := e.backendVersion(t, k); got != 2 {
			t.Fatalf("key %s: backend version %d, want 2", k, got)
		}
		if rs := e.rotations(t, k); len(rs) != 1 || rs[0].State != rekey.RotationDone {
			t.Fatalf("key %s: rotations %+v", k, rs)
		}
		if n := e.countAudit(t, k, rekey.AuditRotationStarted); n != 1 {
			t.Fatalf("key %s: %d rotation.started events", k, n)
		}
		e.checkDEKs(t, k)
	}
}

// Rule 2: a backend already ahead (crash after RotateKey, or the
// provider's own rotation) is adopted, not rotated again.
func TestRule2_AdoptBackendVersion(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 12)
	if _, err := e.kms.RotateKey(e.ctx, k.BackendRef); err != nil {
		t.Fatal(err)
	}
	e.makeDue(t, "k")
	kr := keyReport(t, e.engine(t).RunCycle(e.ctx), "k")
	if kr.Outcome != rotation.OutcomeRotated || kr.ToVersion != 2 {
		t.Fatalf("report = %+v", kr)
	}
	if got := e.backendVersion(t, "k"); got != 2 {
		t.Fatalf("backend version = %d, want 2 (adopted, not rotated again)", got)
	}
	if e.countAudit(t, "k", rekey.AuditVersionAdopted) != 1 || e.countAudit(t, "k", rekey.AuditVersionCreated) != 0 {
		t.Fatalf("audit = %v", e.auditTypes(t, "k"))
	}
	e.checkDEKs(t, "k")
}

// Rule 2: a backend behind the store is refused, not "rotated" to a
// version number the store already used.
func TestRule2_BackendBehindIsRefused(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	eng := e.engine(t)
	if _, err := eng.Rotate(e.ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	// Another backend that only has version 1 of a key by that ref.
	other := memkms.New()
	ref, _ := other.CreateKey(e.ctx, "k")
	if ref != e.key(t, "k").BackendRef {
		t.Fatalf("memkms gave ref %q, the key has %q: this test needs refs that depend on the name only", ref, e.key(t, "k").BackendRef)
	}
	eng2 := e.engine(t, func(c *rotation.Config) { c.Backends = map[string]rekey.KMS{"mem": other} })
	_, err := eng2.Rotate(e.ctx, "k", "", "")
	if err == nil || !strings.Contains(err.Error(), "behind the store") {
		t.Fatalf("Rotate on a stale backend = %v", err)
	}
}

// Rule 2 and every failpoint: an injected error at each named point fails
// the cycle, and the next cycle finishes with exactly one new backend
// version and every DEK on it.
func TestRule2_ErrorAtEveryFailpointThenResume(t *testing.T) {
	t.Parallel()
	for _, name := range failpoint.Names() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := testPolicy()
			p.Grace = 0 // so that the same cycle reaches retirement
			e.createKey(t, "k", p)
			e.addDEKs(t, "k", 35)
			e.makeDue(t, "k")
			eng := e.engine(t, fp(name+"=error@2"))
			if name != failpoint.RewrapAfterBackend && name != failpoint.RewrapAfterBatchCommit {
				eng = e.engine(t, fp(name+"=error"))
			}
			rep := eng.RunCycle(e.ctx)
			kr := keyReport(t, rep, "k")
			if kr.Outcome != rotation.OutcomeFailed || !strings.Contains(kr.Error, "failpoint "+name+": injected error") {
				t.Fatalf("first cycle = %+v", kr)
			}
			if e.countAudit(t, "k", rekey.AuditRotationFailed) != 1 {
				t.Fatalf("no rotation.failed event: %v", e.auditTypes(t, "k"))
			}
			rep = eng.RunCycle(e.ctx)
			if kr := keyReport(t, rep, "k"); !rep.OK() {
				t.Fatalf("second cycle = %+v", kr)
			}
			if got := e.backendVersion(t, "k"); got != 2 {
				t.Fatalf("backend version = %d, want exactly one new version", got)
			}
			vs := e.versions(t, "k")
			if len(vs) != 2 || vs[2].State != rekey.VersionActive || vs[1].State != rekey.VersionRetired {
				t.Fatalf("versions = %+v", vs)
			}
			if c := e.counts(t, "k"); c[2] != 35 {
				t.Fatalf("counts = %v", c)
			}
			if rs := e.rotations(t, "k"); len(rs) != 1 || rs[0].State != rekey.RotationDone || rs[0].LastError != "" {
				t.Fatalf("rotations = %+v", rs)
			}
			e.checkDEKs(t, "k")
		})
	}
}

// crashed is what a test exit function panics with: the in-process stand-in
// for os.Exit(137). The engine's goroutines are stopped by its defers; the
// lease is left to expire as after a real crash.
type crashed struct{ code int }

// Rule 2 across crashes: a crash at each failpoint, then a new worker (new
// owner, after the lease expired) finishes with exactly one new version.
// (TestEndToEndCrashSQLite does the same with real processes.)
func TestRule2_CrashAtEveryFailpointThenResume(t *testing.T) {
	t.Parallel()
	for _, name := range failpoint.Names() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := testPolicy()
			p.Grace = 0
			e.createKey(t, "k", p)
			e.addDEKs(t, "k", 35)
			e.makeDue(t, "k")
			set := failpoint.MustParse(name + "=crash")
			set.SetExit(func(code int) { panic(crashed{code}) })
			set.SetOutput(nil)
			eng := e.engine(t, func(c *rotation.Config) { c.Failpoints = set })
			func() {
				defer func() {
					if r := recover(); r != (crashed{137}) {
						t.Fatalf("recovered %v, want a crash with 137", r)
					}
				}()
				eng.RunCycle(e.ctx)
			}()
			e.clock.Advance(rotation.DefaultLeaseTTL + time.Second)
			rep := e.engine(t).RunCycle(e.ctx)
			if !rep.OK() {
				t.Fatalf("cycle after crash = %+v", rep)
			}
			if got := e.backendVersion(t, "k"); got != 2 {
				t.Fatalf("backend version = %d, want 2", got)
			}
			vs := e.versions(t, "k")
			if len(vs) != 2 || vs[2].State != rekey.VersionActive || vs[1].State != rekey.VersionRetired {
				t.Fatalf("versions = %+v", vs)
			}
			e.checkDEKs(t, "k")
		})
	}
}

// Rule 3: DEKs left on versions older than from_version (an earlier,
// partial rotation) are re-wrapped too.
func TestRule3_CatchesDEKsOnOlderVersions(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 30)
	eng := e.engine(t)
	if _, err := eng.Rotate(e.ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	e.moveDEKs(t, "k", 1, ids[5:12]) // 7 DEKs back on v1
	e.addDEKs(t, "k", 5)             // on v2
	r, err := eng.Rotate(e.ctx, "k", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.FromVersion != 2 || r.ToVersion != 3 || r.Total != 35 || r.Done != 35 {
		t.Fatalf("rotation = %+v", r)
	}
	if c := e.counts(t, "k"); c[3] != 35 || len(c) != 1 {
		t.Fatalf("counts = %v", c)
	}
	e.checkDEKs(t, "k")
}

// Rule 3: batches are checkpointed; the backend sees at most Concurrency
// calls at once; the engine unwraps and wraps itself when the backend has
// no re-wrap.
func TestRule3_BatchesCheckpointsAndBoundedConcurrency(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 200)
	counting := &onlyKMS{KMS: e.kms}
	var cursors []string
	eng := e.engine(t, func(c *rotation.Config) {
		c.Backends = map[string]rekey.KMS{e.backend: counting}
		c.BatchSize = 50
		c.Concurrency = 3
	})
	rotation.SetTestHook(eng, func(name string) error {
		if name == failpoint.RewrapAfterBatchCommit {
			r, err := e.store.OpenRotation(e.ctx, "k")
			if err != nil {
				return err
			}
			cursors = append(cursors, r.Cursor)
		}
		return nil
	})
	r, err := eng.Rotate(e.ctx, "k", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Done != 200 || len(cursors) != 4 {
		t.Fatalf("done %d, checkpoints %d", r.Done, len(cursors))
	}
	for i := 1; i < len(cursors); i++ {
		if cursors[i] <= cursors[i-1] {
			t.Fatalf("cursor did not advance: %v", cursors)
		}
	}
	if m := counting.maxInFlight.Load(); m > 3 || m < 1 {
		t.Fatalf("max backend calls in flight = %d, want 1..3", m)
	}
	e.checkDEKs(t, "k")
}

// Rule 3: a DEK changed by someone else during the re-wrap (its swap
// loses) is re-read and re-wrapped from its new value, never overwritten.
func TestRule3_LostSwapIsReReadNeverOverwritten(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 20)
	eng := e.engine(t)
	victim := ids[3]
	newPlain := []byte("0123456789abcdef0123456789abcdef")
	rotation.SetTestHook(eng, onHit(failpoint.RewrapAfterBackend, 1, func() error {
		// A concurrent writer replaces the DEK (same version, new bytes)
		// between the engine's read and its swap.
		l, err := e.store.AcquireLease(e.ctx, "k", eng.Owner(), time.Minute, e.clock.Now())
		if err != nil {
			return err
		}
		d, err := e.store.GetDEK(e.ctx, victim)
		if err != nil {
			return err
		}
		w, err := e.kms.Wrap(e.ctx, k.BackendRef, 1, newPlain)
		if err != nil {
			return err
		}
		lost, err := e.store.SwapDEKs(e.ctx, []rekey.DEKSwap{{ID: victim, OldWrapped: d.Wrapped, NewWrapped: w, NewVersion: 1}}, l)
		if err != nil || len(lost) > 0 {
			return errors.Join(err, errTest)
		}
		e.mu.Lock()
		e.plain[victim] = newPlain
		e.mu.Unlock()
		return nil
	}))
	r, err := eng.Rotate(e.ctx, "k", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Done != 20 || r.Failed != 0 {
		t.Fatalf("rotation = %+v", r)
	}
	d, _ := e.store.GetDEK(e.ctx, victim)
	pt, err := e.kms.Unwrap(e.ctx, k.BackendRef, d.Version, d.Wrapped)
	if err != nil || string(pt) != string(newPlain) || d.Version != 2 {
		t.Fatalf("victim DEK: v%d %q %v, want the concurrent writer's value on v2", d.Version, pt, err)
	}
	e.checkDEKs(t, "k")
}

// Rule 4: the final sweep after commit catches a DEK written under the old
// version behind the re-wrap's cursor.
func TestRule4_FinalSweepCatchesLateDEK(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	lateID := rekey.NewID() // sorts before every DEK created below
	e.addDEKs(t, "k", 25)
	e.makeDue(t, "k")
	eng := e.engine(t, fp("rotation.before_commit=error"))
	if kr := keyReport(t, eng.RunCycle(e.ctx), "k"); kr.Outcome != rotation.OutcomeFailed {
		t.Fatalf("first cycle = %+v", kr)
	}
	// The old version is still active: an application writes a DEK under
	// it, behind the cursor.
	pt := []byte("late-late-late-late-late-late-32")
	w, err := e.kms.Wrap(e.ctx, k.BackendRef, 1, pt)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.InsertDEKs(e.ctx, []rekey.DEK{{ID: lateID, Key: "k", Version: 1, Wrapped: w}}); err != nil {
		t.Fatal(err)
	}
	e.plain[lateID] = pt
	rep := eng.RunCycle(e.ctx)
	if !rep.OK() {
		t.Fatalf("second cycle = %+v", rep)
	}
	d, _ := e.store.GetDEK(e.ctx, lateID)
	if d.Version != 2 {
		t.Fatalf("late DEK on v%d, want 2", d.Version)
	}
	var sweep int
	for _, ev := range e.audit(t, "k") {
		if ev.Type == rekey.AuditRewrapProgress && ev.Status == string(rekey.RotationCommitted) {
			sweep++
		}
	}
	if sweep != 1 {
		t.Fatalf("final sweep progress events = %d, want 1", sweep)
	}
	if c := e.counts(t, "k"); c[2] != 26 {
		t.Fatalf("counts = %v", c)
	}
	e.checkDEKs(t, "k")
}

// Rules 5 and 6: a corrupt DEK is skipped, reported by id, left unchanged;
// the rotation commits; its version's retirement is blocked and audited.
func TestRule6_CorruptDEKSkippedAndBlocksRetirement(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 15)
	bad := e.addCorruptDEK(t, "k")
	before, _ := e.store.GetDEK(e.ctx, bad)
	e.addDEKs(t, "k", 5)
	e.makeDue(t, "k")
	eng := e.engine(t)
	kr := keyReport(t, eng.RunCycle(e.ctx), "k")
	if kr.Outcome != rotation.OutcomeRotated || len(kr.FailedDEKs) != 1 || kr.FailedDEKs[0] != bad {
		t.Fatalf("report = %+v", kr)
	}
	r := e.rotations(t, "k")[0]
	if r.State != rekey.RotationDone || r.Failed != 1 || len(r.FailedDEKs) != 1 || r.FailedDEKs[0] != bad || r.Done != 20 {
		t.Fatalf("rotation = %+v", r)
	}
	after, _ := e.store.GetDEK(e.ctx, bad)
	if after.Version != 1 || string(after.Wrapped) != string(before.Wrapped) {
		t.Fatal("corrupt DEK was changed")
	}
	if !strings.Contains(e.logs.String(), bad) {
		t.Fatal("corrupt DEK id not logged")
	}
	// After the grace the version cannot retire.
	e.clock.Advance(3 * rekey.Day)
	rep := eng.RunCycle(e.ctx)
	kr = keyReport(t, rep, "k")
	if len(kr.Blocked) != 1 || kr.Blocked[0] != (rotation.BlockedVersion{Version: 1, DEKs: 1}) || !rep.OK() {
		t.Fatalf("report after grace = %+v", kr)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionPendingRetirement {
		t.Fatalf("v1 = %s, want pending_retirement", st)
	}
	eng.RunCycle(e.ctx) // same count: audited once, not every cycle
	if n := e.countAudit(t, "k", rekey.AuditRetirementBlocked); n != 1 {
		t.Fatalf("retirement.blocked events = %d, want 1", n)
	}
	e.checkDEKs(t, "k", bad)
}

// Rule 5: DEKs still on a pending version when its grace ends are
// re-wrapped first, then the version retires.
func TestRule5_RewrapsLeftoversThenRetires(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 20)
	eng := e.engine(t)
	if _, err := eng.Rotate(e.ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	e.moveDEKs(t, "k", 1, ids[:4])
	e.clock.Advance(3 * rekey.Day)
	kr := keyReport(t, eng.RunCycle(e.ctx), "k")
	if kr.Rewrapped != 4 || len(kr.Retired) != 1 || len(kr.Blocked) != 0 {
		t.Fatalf("report = %+v", kr)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionRetired {
		t.Fatalf("v1 = %s", st)
	}
	e.checkDEKs(t, "k")
}

// Retire: refused with the count while DEKs reference the version, refused
// for the active version, allowed early once nothing references it.
func TestRetire_RefusedWhileInUse(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 12)
	eng := e.engine(t)
	if err := eng.Retire(e.ctx, "k", 1); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Fatalf("Retire(active) = %v", err)
	}
	if _, err := eng.Rotate(e.ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	e.moveDEKs(t, "k", 1, ids[:3])
	err := eng.Retire(e.ctx, "k", 1)
	var inUse *rekey.VersionInUseError
	if !errors.As(err, &inUse) || inUse.DEKs != 3 || inUse.Version != 1 {
		t.Fatalf("Retire(in use) = %v", err)
	}
	if _, err := e.kms.Unwrap(e.ctx, k.BackendRef, 1, e.allDEKs(t, "k")[0].Wrapped); err != nil && errors.Is(err, rekey.ErrVersionDisabled) {
		t.Fatal("a refused Retire disabled the version at the backend")
	}
	e.moveDEKs(t, "k", 2, ids[:3])
	if err := eng.Retire(e.ctx, "k", 1); err != nil {
		t.Fatalf("Retire(unused) = %v", err)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionRetired {
		t.Fatalf("v1 = %s", st)
	}
	if err := eng.Retire(e.ctx, "k", 1); err != nil {
		t.Fatalf("Retire(retired) = %v, want a no-op", err)
	}
	if err := eng.Retire(e.ctx, "k", 9); !errors.Is(err, rekey.ErrVersionNotFound) {
		t.Fatalf("Retire(unknown) = %v", err)
	}
	e.checkDEKs(t, "k")
}

// Rule 6: one key whose backend fails every call does not stop another
// key's rotation in the same cycle; the failure is audited with its text.
func TestRule6_OneBadKeyDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	e := setup(t)
	bad := e.createKey(t, "bad", testPolicy())
	e.createKey(t, "good", testPolicy())
	e.addDEKs(t, "bad", 5)
	e.addDEKs(t, "good", 5)
	e.makeDue(t, "good")
	e.mkms.Fail = func(op, ref string) error {
		if ref == bad.BackendRef {
			return errors.New("access denied by policy")
		}
		return nil
	}
	rep := e.engine(t).RunCycle(e.ctx)
	if rep.OK() || rep.Failed != 1 {
		t.Fatalf("cycle = %+v", rep)
	}
	if kr := keyReport(t, rep, "bad"); kr.Outcome != rotation.OutcomeFailed || !strings.Contains(kr.Error, "access denied") {
		t.Fatalf("bad = %+v", kr)
	}
	if kr := keyReport(t, rep, "good"); kr.Outcome != rotation.OutcomeRotated || kr.Rewrapped != 5 {
		t.Fatalf("good = %+v", kr)
	}
	evs := e.audit(t, "bad")
	last := evs[len(evs)-1]
	if last.Type != rekey.AuditRotationFailed || !strings.Contains(last.Error, "access denied") || last.Status != rotation.ResultFailure {
		t.Fatalf("last audit event of bad = %+v", last)
	}
	// Nothing is written for the bad key but the audited failure: its
	// backend refused before any rotation was claimed.
	if r := e.rotations(t, "bad"); len(r) != 0 {
		t.Fatalf("rotations of bad = %+v, want none", r)
	}
	if v := e.versions(t, "bad"); len(v) != 1 {
		t.Fatalf("versions of bad = %+v, want only v1", v)
	}
}

// Rule 6: transient backend and store errors are retried with backoff,
// then the rotation succeeds.
func TestRule6_TransientErrorsRetried(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 30)
	var kmsFails, storeFails atomic.Int64
	e.mkms.Fail = func(op, ref string) error {
		if (op == memkms.OpRewrap || op == memkms.OpRotate) && kmsFails.Add(1) <= 3 {
			return transient(errors.New("503"))
		}
		return nil
	}
	e.mstore.Fail = func(op string) error {
		if op == "SwapDEKs" && storeFails.Add(1) <= 2 {
			return &rekey.UnreachableError{Service: "store:test", Err: errors.New("connection reset")}
		}
		return nil
	}
	r, err := e.engine(t).Rotate(e.ctx, "k", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Done != 30 || e.backendVersion(t, "k") != 2 {
		t.Fatalf("rotation = %+v, backend v%d", r, e.backendVersion(t, "k"))
	}
	e.checkDEKs(t, "k")
}

// Rule 6: when retries run out the key fails this cycle, and resumes next.
func TestRule6_TransientExhaustedFailsThenResumes(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 30)
	e.makeDue(t, "k")
	var down atomic.Bool
	down.Store(true)
	e.mkms.Fail = func(op, ref string) error {
		if op == memkms.OpRewrap && down.Load() {
			return transient(errors.New("timeout"))
		}
		return nil
	}
	eng := e.engine(t)
	if kr := keyReport(t, eng.RunCycle(e.ctx), "k"); kr.Outcome != rotation.OutcomeFailed || !strings.Contains(kr.Error, "unreachable") {
		t.Fatalf("first cycle = %+v", kr)
	}
	down.Store(false)
	if rep := eng.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("second cycle = %+v", rep)
	}
	if e.backendVersion(t, "k") != 2 || e.counts(t, "k")[2] != 30 {
		t.Fatal("not rotated")
	}
}

// Rule 7: a worker whose lease was taken over gets ErrFenced and writes
// nothing more; the new owner finishes.
func TestRule7_FencedWorkerWritesNothingMore(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 40)
	e.makeDue(t, "k")
	a := e.engine(t)
	b := e.engine(t)
	var auditAtTakeover int
	rotation.SetTestHook(a, onHit(failpoint.RewrapAfterBackend, 2, func() error {
		// A pauses past its lease; B takes the key over.
		e.clock.Advance(time.Hour)
		if _, err := e.store.AcquireLease(e.ctx, "k", b.Owner(), time.Minute, e.clock.Now()); err != nil {
			return err
		}
		auditAtTakeover = len(e.audit(t, "k"))
		return nil
	}))
	kr := keyReport(t, a.RunCycle(e.ctx), "k")
	if kr.Outcome != rotation.OutcomeLostLease || !errors.Is(kr.Err, rekey.ErrFenced) {
		t.Fatalf("fenced worker report = %+v", kr)
	}
	if n := len(e.audit(t, "k")); n != auditAtTakeover {
		t.Fatalf("fenced worker wrote %d audit events after the takeover", n-auditAtTakeover)
	}
	if c := e.counts(t, "k"); c[2] != 10 || c[1] != 30 {
		t.Fatalf("counts = %v: the fenced batch must not be written", c)
	}
	r := e.openRotations(t, "k")[0]
	if r.Done != 10 || r.Owner != a.Owner() {
		t.Fatalf("rotation after fencing = %+v", r)
	}
	if rep := b.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("new owner cycle = %+v", rep)
	}
	r = e.rotations(t, "k")[0]
	if r.State != rekey.RotationDone || r.Owner != b.Owner() || e.backendVersion(t, "k") != 2 {
		t.Fatalf("rotation = %+v", r)
	}
	e.checkDEKs(t, "k")
}

// Rule 7: the lease is renewed in the background while a rotation runs.
func TestRule7_LeaseRenewedInBackground(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 20)
	renewed := make(chan struct{})
	var renewals atomic.Int64
	e.mstore.Fail = func(op string) error {
		if op == "RenewLease" && renewals.Add(1) == 2 {
			close(renewed)
		}
		return nil
	}
	eng := e.engine(t, func(c *rotation.Config) { c.LeaseTTL = 30 * time.Millisecond })
	rotation.SetTestHook(eng, onHit(failpoint.RewrapAfterBatchCommit, 1, func() error {
		<-renewed // hold the rotation until two renewals went through
		return nil
	}))
	if _, err := eng.Rotate(e.ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	if renewals.Load() < 2 {
		t.Fatal("lease not renewed")
	}
}

// Rule 7: a key leased by another worker is skipped by the cycle and
// refused by Rotate.
func TestRule7_LeaseHeldSkips(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.makeDue(t, "k")
	if _, err := e.store.AcquireLease(e.ctx, "k", "someone-else", time.Hour, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	eng := e.engine(t)
	rep := eng.RunCycle(e.ctx)
	if kr := keyReport(t, rep, "k"); kr.Outcome != rotation.OutcomeSkipped || !rep.OK() {
		t.Fatalf("report = %+v", kr)
	}
	if _, err := eng.Rotate(e.ctx, "k", "", ""); !errors.Is(err, rekey.ErrLeaseHeld) {
		t.Fatalf("Rotate = %v, want ErrLeaseHeld", err)
	}
	if e.backendVersion(t, "k") != 1 {
		t.Fatal("rotated without the lease")
	}
}

// Rule 8: every event of a rotation carries the key, versions, rotation id,
// actor and reason; the trail's hash chain holds.
func TestRule8_AuditEventsCarryTheirFields(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 5)
	eng := e.engine(t)
	r, err := eng.Rotate(e.ctx, "k", rekey.ReasonManual, "auditor asked")
	if err != nil {
		t.Fatal(err)
	}
	prev := rekey.GenesisHash
	all, _ := e.store.ListAudit(e.ctx, rekey.AuditQuery{Limit: 1000})
	for _, ev := range all {
		if ev.PrevHash != prev || ev.ComputeHash() != ev.Hash {
			t.Fatalf("chain broken at %d", ev.Seq)
		}
		prev = ev.Hash
		if ev.Type == rekey.AuditKeyCreated {
			continue
		}
		if ev.RotationID != r.ID || ev.Actor != eng.Owner() || ev.FromVersion != 1 || ev.Reason != "manual: auditor asked" {
			t.Fatalf("event %+v", ev)
		}
		if ev.Type != rekey.AuditRotationStarted && ev.ToVersion != 2 {
			t.Fatalf("event %s to_version %d", ev.Type, ev.ToVersion)
		}
	}
	if evs := e.audit(t, "k"); evs[len(evs)-1].Type != rekey.AuditRotationCompleted || evs[len(evs)-1].DEKs != 5 {
		t.Fatalf("last event = %+v", evs[len(evs)-1])
	}
}

// Rule 9: cancelling the context mid re-wrap ends the cycle as interrupted
// (not failed) after the batch was checkpointed and the lease released; the
// next run resumes and finishes. (The worker loop around RunCycle is
// package worker's and tested there.)
func TestRule9_GracefulStop(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 60)
	e.makeDue(t, "k")
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	eng := e.engine(t)
	rotation.SetTestHook(eng, onHit(failpoint.RewrapAfterBatchCommit, 2, func() error {
		cancel() // SIGTERM arrives
		return nil
	}))
	rep := eng.RunCycle(ctx)
	if kr := keyReport(t, rep, "k"); !rep.Interrupted || rep.Failed != 0 || kr.Outcome != rotation.OutcomeInterrupted {
		t.Fatalf("cycle = %+v, want interrupted (not failed) on a graceful stop", rep)
	}
	open := e.openRotations(t, "k")
	if len(open) != 1 || open[0].Done != 20 || open[0].Cursor == "" || open[0].State != rekey.RotationRewrapping {
		t.Fatalf("open rotation after stop = %+v", open)
	}
	if c := e.counts(t, "k"); c[2] != 20 {
		t.Fatalf("counts = %v: checkpoint and DEKs must agree", c)
	}
	if n := e.countAudit(t, "k", rekey.AuditRotationFailed); n != 0 {
		t.Fatal("a graceful stop was audited as a failure")
	}
	// Lease released: another owner gets it at once, without waiting.
	other := e.engine(t)
	if rep := other.RunCycle(e.ctx); !rep.OK() || keyReport(t, rep, "k").Outcome != rotation.OutcomeRotated {
		t.Fatalf("resume = %+v", rep)
	}
	r := e.rotations(t, "k")[0]
	if r.State != rekey.RotationDone || r.Done != 60 || e.backendVersion(t, "k") != 2 {
		t.Fatalf("rotation = %+v", r)
	}
	e.checkDEKs(t, "k")
}

// Graceful stop while the backend is slow: the in-flight batch is
// abandoned before anything is written.
func TestRule9_StopAbandonsInFlightBatch(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 30)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	var calls atomic.Int64
	e.mkms.Fail = func(op, ref string) error {
		if op == memkms.OpRewrap && calls.Add(1) == 6 { // in the second batch
			cancel()
			return transient(context.Canceled)
		}
		return nil
	}
	_, err := e.engine(t).Rotate(ctx, "k", "", "")
	if err == nil || ctx.Err() == nil {
		t.Fatalf("Rotate = %v", err)
	}
	r := e.openRotations(t, "k")[0]
	if c := e.counts(t, "k"); c[2] != r.Done {
		t.Fatalf("counts %v vs checkpoint %d: half-written batch", c, r.Done)
	}
	if _, err := e.store.AcquireLease(e.ctx, "k", "next", time.Minute, e.clock.Now()); err != nil {
		t.Fatalf("lease not released: %v", err)
	}
}

// RotateCompromised: the version is marked compromised first, its DEKs are
// re-wrapped before any other, it is disabled at the backend once unused,
// and it stays compromised in the store.
func TestRotateCompromised(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 30)
	counting := &onlyKMS{KMS: e.kms}
	eng := e.engine(t, func(c *rotation.Config) {
		c.Backends = map[string]rekey.KMS{e.backend: counting}
		c.Concurrency = 1
	})
	if _, err := eng.Rotate(e.ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	// v2 active; leave 6 DEKs on v1 (pending retirement) and say v1 leaked.
	e.moveDEKs(t, "k", 1, ids[20:26])
	counting.mu.Lock()
	counting.unwrapped = nil
	counting.mu.Unlock()
	r, err := eng.RotateCompromised(e.ctx, "k", 1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Reason != rekey.ReasonEmergency || r.Compromised != 1 || r.FromVersion != 2 || r.ToVersion != 3 || r.Done != 30 || r.State != rekey.RotationDone {
		t.Fatalf("rotation = %+v", r)
	}
	counting.mu.Lock()
	order := append([]int(nil), counting.unwrapped...)
	counting.mu.Unlock()
	for i, v := range order {
		if (i < 6) != (v == 1) {
			t.Fatalf("unwrap order %v: the compromised version's DEKs must come first", order)
		}
	}
	vs := e.versions(t, "k")
	if vs[1].State != rekey.VersionCompromised || vs[3].State != rekey.VersionActive || vs[2].State != rekey.VersionPendingRetirement {
		t.Fatalf("versions = %+v", vs)
	}
	if _, err := e.kms.Wrap(e.ctx, k.BackendRef, 1, make([]byte, 32)); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Fatalf("backend still uses compromised v1: %v", err)
	}
	types := e.auditTypes(t, "k")
	iComp, iStart := -1, -1
	for i, ty := range types {
		if ty == rekey.AuditVersionCompromised && iComp < 0 {
			iComp = i
		}
		if ty == rekey.AuditRotationStarted {
			iStart = i
		}
	}
	if iComp < 0 || iComp > iStart {
		t.Fatalf("audit = %v: version.compromised must precede the emergency rotation", types)
	}
	if c := e.counts(t, "k"); c[3] != 30 {
		t.Fatalf("counts = %v", c)
	}
	e.checkDEKs(t, "k")
	// A later cycle leaves it compromised and does not resurrect it.
	e.clock.Advance(10 * rekey.Day)
	if rep := eng.RunCycle(e.ctx); !rep.OK() {
		t.Fatalf("cycle = %+v", rep)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionCompromised {
		t.Fatalf("v1 = %s", st)
	}
}

// Retire of a compromised version on a backend that cannot retire versions
// (nothing to disable there) still refuses while DEKs reference it, by
// their rows: it never reports a compromised version dealt with while
// data depends on it.
func TestRetire_CompromisedInUseWithoutBackendRetirement(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 12)
	eng := e.engine(t, func(c *rotation.Config) {
		c.Backends = map[string]rekey.KMS{e.backend: struct{ rekey.KMS }{e.kms}} // Wrap and Unwrap only
	})
	if _, err := eng.RotateCompromised(e.ctx, "k", 1); err != nil {
		t.Fatal(err)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionCompromised {
		t.Fatalf("v1 = %s, want compromised", st)
	}
	// Three DEKs come back on v1 (restored from a backup taken before).
	e.moveDEKs(t, "k", 1, ids[:3])
	err := eng.Retire(e.ctx, "k", 1)
	var inUse *rekey.VersionInUseError
	if !errors.As(err, &inUse) || inUse.DEKs != 3 || inUse.Version != 1 {
		t.Fatalf("Retire(compromised, 3 DEKs on it, backend without retirement) = %v, want *VersionInUseError with 3 DEKs", err)
	}
	e.moveDEKs(t, "k", 2, ids[:3])
	if err := eng.Retire(e.ctx, "k", 1); err != nil {
		t.Fatalf("Retire(compromised, unused) = %v", err)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionCompromised {
		t.Fatalf("v1 = %s, want it to stay compromised", st)
	}
	e.checkDEKs(t, "k")
}

// RotateCompromised of the active version rotates away from it.
func TestRotateCompromised_ActiveVersion(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 25)
	eng := e.engine(t)
	r, err := eng.RotateCompromised(e.ctx, "k", 1)
	if err != nil {
		t.Fatal(err)
	}
	if r.ToVersion != 2 || r.Done != 25 {
		t.Fatalf("rotation = %+v", r)
	}
	vs := e.versions(t, "k")
	if vs[1].State != rekey.VersionCompromised || vs[2].State != rekey.VersionActive {
		t.Fatalf("versions = %+v", vs)
	}
	if _, err := e.kms.Wrap(e.ctx, k.BackendRef, 1, make([]byte, 32)); !errors.Is(err, rekey.ErrVersionDisabled) {
		t.Fatalf("v1 still enabled at the backend: %v", err)
	}
	e.checkDEKs(t, "k")
}

// An emergency interrupted after the version was marked (the active version
// is compromised, no rotation open) is picked up by the next cycle.
func TestRotateCompromised_ResumedByCycle(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.createKey(t, "k", testPolicy())
	e.addDEKs(t, "k", 10)
	eng := e.engine(t, fp("rotation.after_claim=error"))
	if _, err := eng.RotateCompromised(e.ctx, "k", 1); !errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("RotateCompromised = %v", err)
	}
	rep := eng.RunCycle(e.ctx) // not due, but the open emergency rotation resumes
	if kr := keyReport(t, rep, "k"); kr.Outcome != rotation.OutcomeRotated || kr.ToVersion != 2 {
		t.Fatalf("cycle = %+v", kr)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionCompromised {
		t.Fatalf("v1 = %s", st)
	}
}

// Destroy: a retired version past destroy_after is destroyed.
func TestDestroyAfterPolicy(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := testPolicy()
	p.Grace = 0
	p.DestroyAfter = rekey.Day
	e.createKey(t, "k", p)
	e.addDEKs(t, "k", 3)
	eng := e.engine(t)
	e.makeDue(t, "k")
	kr := keyReport(t, eng.RunCycle(e.ctx), "k")
	if len(kr.Retired) != 1 {
		t.Fatalf("report = %+v", kr)
	}
	e.clock.Advance(rekey.Day + time.Second)
	kr = keyReport(t, eng.RunCycle(e.ctx), "k")
	if len(kr.Destroyed) != 1 || e.versions(t, "k")[1].State != rekey.VersionDestroyed {
		t.Fatalf("report = %+v", kr)
	}
	if e.countAudit(t, "k", rekey.AuditVersionDestroyed) != 1 {
		t.Fatal("no version.destroyed event")
	}
}

// Plan is a dry run: no writes, and it says what the cycle would do.
func TestPlanIsADryRun(t *testing.T) {
	t.Parallel()
	e := setup(t)
	long := testPolicy()
	long.RotationPeriod = 365 * rekey.Day
	e.createKey(t, "due", testPolicy())
	e.createKey(t, "idle", long)
	e.addDEKs(t, "due", 2500)
	e.addDEKs(t, "idle", 3)
	e.makeDue(t, "due")
	eng := e.engine(t, func(c *rotation.Config) { c.BatchSize = 1000; c.Concurrency = 8 })
	var calls atomic.Int64
	e.mkms.Fail = func(op, ref string) error { calls.Add(1); return nil }
	auditBefore := len(e.audit(t, "due"))
	p, err := eng.Plan(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 0 || len(e.audit(t, "due")) != auditBefore || len(e.rotations(t, "due")) != 0 {
		t.Fatal("Plan wrote or called the backend")
	}
	var due, idle rotation.KeyPlan
	for _, kp := range p.Keys {
		switch kp.Key {
		case "due":
			due = kp
		case "idle":
			idle = kp
		}
	}
	if idle.Due || idle.Action != rotation.ActionNone || idle.DEKsToRewrap != 0 || idle.DEKsByVersion[1] != 3 {
		t.Fatalf("idle plan = %+v", idle)
	}
	if !due.Due || due.Action != rotation.ActionRotate || due.DEKsToRewrap != 2500 || due.RateSource != "assumed" {
		t.Fatalf("plan = %+v", due)
	}
	// memkms has batch re-wrap: 2 full batches of 8 chunks, then 500 in 8.
	if due.BackendCalls["rewrap_batch"] != 24 || due.BackendCalls["rotate_key"] != 1 || due.BackendCalls["current_version"] != 1 {
		t.Fatalf("backend calls = %v", due.BackendCalls)
	}
	if due.EstimatedDuration() != 2500*time.Second/time.Duration(rotation.AssumedRate) {
		t.Fatalf("estimate = %v", due.EstimatedDuration())
	}
	e.mkms.Fail = nil
	if _, err := eng.Rotate(e.ctx, "due", "", ""); err != nil {
		t.Fatal(err)
	}
	p, _ = eng.Plan(e.ctx)
	for _, kp := range p.Keys {
		if kp.Key != "due" {
			continue
		}
		if kp.Action != rotation.ActionNone || !strings.HasPrefix(kp.RateSource, "rotation ") && kp.RateSource != "assumed" {
			t.Fatalf("plan after rotation = %+v", kp)
		}
		if len(kp.Versions) != 2 || kp.Versions[0].Action != rekey.VersionWait || kp.Versions[0].RetireAfter.IsZero() {
			t.Fatalf("versions = %+v", kp.Versions)
		}
	}
}

// Rule 7 with rule 2: a worker that lost the key just before asking the
// backend to rotate does not rotate (the backend takes no fence, so the
// lease is confirmed right before the call).
func TestRule7_FencedBeforeBackendRotate(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	e.makeDue(t, "k")
	a := e.engine(t)
	var once sync.Once
	e.mkms.Fail = func(op, ref string) error {
		if op == memkms.OpCurrent && ref == k.BackendRef {
			once.Do(func() {
				e.clock.Advance(time.Hour)
				if _, err := e.store.AcquireLease(e.ctx, "k", "thief", time.Hour, e.clock.Now()); err != nil {
					t.Error(err)
				}
			})
		}
		return nil
	}
	kr := keyReport(t, a.RunCycle(e.ctx), "k")
	if kr.Outcome != rotation.OutcomeLostLease {
		t.Fatalf("report = %+v", kr)
	}
	if v := e.backendVersion(t, "k"); v != 1 {
		t.Fatalf("backend rotated to v%d by a fenced worker", v)
	}
}

// dekSourceOnly is a DEKSource with nothing more (no GetDEK), as an
// adapter over an application's own table could be.
type dekSourceOnly struct{ rekey.DEKSource }

// Rule 3 with a DEKSource that cannot read one row: a lost swap is left to
// the final sweep, which re-lists it; still never overwritten.
func TestRule3_LostSwapWithoutGetDEKLeftToSweep(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 20)
	eng := e.engine(t, func(c *rotation.Config) { c.DEKs = dekSourceOnly{e.store} })
	victim := ids[12]
	newPlain := []byte("fedcba9876543210fedcba9876543210")
	rotation.SetTestHook(eng, onHit(failpoint.RewrapAfterBackend, 2, func() error {
		l, err := e.store.AcquireLease(e.ctx, "k", eng.Owner(), time.Minute, e.clock.Now())
		if err != nil {
			return err
		}
		d, _ := e.store.GetDEK(e.ctx, victim)
		w, _ := e.kms.Wrap(e.ctx, k.BackendRef, 1, newPlain)
		if lost, err := e.store.SwapDEKs(e.ctx, []rekey.DEKSwap{{ID: victim, OldWrapped: d.Wrapped, NewWrapped: w, NewVersion: 1}}, l); err != nil || len(lost) > 0 {
			return errors.Join(err, errTest)
		}
		e.mu.Lock()
		e.plain[victim] = newPlain
		e.mu.Unlock()
		return nil
	}))
	r, err := eng.Rotate(e.ctx, "k", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Done != 20 {
		t.Fatalf("rotation = %+v", r)
	}
	if d, _ := e.store.GetDEK(e.ctx, victim); d.Version != 2 {
		t.Fatalf("victim on v%d", d.Version)
	}
	e.checkDEKs(t, "k")
}

// lowCounts is a store whose DEK counters read 0 for every version (as a
// counter set wrong by hand would) while its rows are right
// (rekey.DEKRowCounter counts them).
type lowCounts struct{ rekey.Store }

func (lowCounts) CountDEKs(context.Context, string) (map[int]int64, error) {
	return map[int]int64{}, nil
}

func (s lowCounts) CountDEKRows(ctx context.Context, key string, version int) (int64, error) {
	c, err := s.Store.CountDEKs(ctx, key)
	return c[version], err
}

// A version is retired (or a compromised one disabled) only on a count of
// its rows, never on a store's counters alone: with counters saying 0 and
// three DEKs still on v1, neither Retire nor a cycle past the grace
// retires v1, and the backend never disables it.
func TestRetire_CountsRowsNotCounters(t *testing.T) {
	t.Parallel()
	e := setup(t)
	k := e.createKey(t, "k", testPolicy())
	ids := e.addDEKs(t, "k", 12)
	e.store = lowCounts{e.store}
	eng := e.engine(t)
	if _, err := eng.Rotate(e.ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	e.moveDEKs(t, "k", 1, ids[:3])
	backendKeeps := func(when string) {
		t.Helper()
		for _, d := range e.allDEKs(t, "k") {
			if d.Version != 1 {
				continue
			}
			if _, err := e.kms.Unwrap(e.ctx, k.BackendRef, 1, d.Wrapped); err != nil {
				t.Fatalf("%s: DEK %s on v1 does not unwrap: %v", when, d.ID, err)
			}
		}
	}
	err := eng.Retire(e.ctx, "k", 1)
	var inUse *rekey.VersionInUseError
	if !errors.As(err, &inUse) || inUse.DEKs != 3 || inUse.Version != 1 {
		t.Fatalf("Retire with counters at 0 and 3 rows on v1 = %v, want *VersionInUseError with 3 DEKs", err)
	}
	backendKeeps("after Retire")

	// Past the grace, a cycle sees a count of 0: it tries to retire, the
	// rows stop it before the backend, and it reports v1 blocked.
	e.clock.Advance(3 * rekey.Day)
	kr := keyReport(t, eng.RunCycle(e.ctx), "k")
	if len(kr.Retired) != 0 || len(kr.Blocked) != 1 || kr.Rewrapped != 0 {
		t.Fatalf("report = %+v, want v1 blocked, nothing retired", kr)
	}
	if st := e.versions(t, "k")[1].State; st != rekey.VersionPendingRetirement {
		t.Fatalf("v1 = %s, want pending_retirement", st)
	}
	backendKeeps("after the cycle")
	e.checkDEKs(t, "k")
}
