package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// retiredFixture commits version 2 of key "a" over version 1 (now pending
// retirement) with n DEKs left on version 1.
func retiredFixture(t *testing.T, f *fixture, n int) (rekey.Lease, []rekey.DEK) {
	t.Helper()
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	deks := f.insertDEKs(t, "a", 1, n)
	f.commitVersion(t, "a", 1, 2, l)
	return l, deks
}

func retire(f *fixture, unused bool) rekey.VersionChange {
	return rekey.VersionChange{
		Key:           "a",
		Version:       1,
		From:          []rekey.VersionState{rekey.VersionPendingRetirement},
		To:            rekey.VersionRetired,
		RequireUnused: unused,
		At:            f.at(8 * rekey.Day),
	}
}

func testVersionsGuard(t *testing.T, f *fixture) {
	l, _ := retiredFixture(t, f, 0)
	tests := []struct {
		name string
		c    rekey.VersionChange
		want error
	}{
		{"active is not pending", rekey.VersionChange{Key: "a", Version: 2, From: []rekey.VersionState{rekey.VersionPendingRetirement}, To: rekey.VersionRetired, At: f.t0}, rekey.ErrStale},
		{"not retired yet", rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionRetired}, To: rekey.VersionDestroyed, At: f.t0}, rekey.ErrStale},
		{"no guard", rekey.VersionChange{Key: "a", Version: 1, To: rekey.VersionRetired, At: f.t0}, rekey.ErrInvalidArgument},
		{"unknown state", rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement}, To: "gone", At: f.t0}, rekey.ErrInvalidArgument},
		{"to active", rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement}, To: rekey.VersionActive, At: f.t0}, rekey.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.versions(t, "a")
			n := f.auditLen(t)
			wantErr(t, "ChangeVersionState", f.s.ChangeVersionState(f.ctx, tc.c, &l, event(rekey.AuditVersionRetired, "a", f.t0)), tc.want)
			equal(t, "versions after a refused change", f.versions(t, "a"), before)
			if m := f.auditLen(t); m != n {
				t.Errorf("a refused change appended %d events", m-n)
			}
		})
	}

	// One of several From states is enough; the time field goes with the state.
	c := retire(f, true)
	c.From = []rekey.VersionState{rekey.VersionCompromised, rekey.VersionPendingRetirement}
	if err := f.s.ChangeVersionState(f.ctx, c, nil, event(rekey.AuditVersionRetired, "a", c.At)); err != nil {
		t.Fatalf("retire: %v", err)
	}
	v := f.versions(t, "a")[1]
	if v.State != rekey.VersionRetired || !sameTime(v.RetiredAt, c.At) {
		t.Errorf("retired version %+v, want retired at %v", v, rekey.NormalizeTime(c.At))
	}
	d := rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionRetired}, To: rekey.VersionDestroyed, At: f.at(40 * rekey.Day)}
	if err := f.s.ChangeVersionState(f.ctx, d, nil); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	v = f.versions(t, "a")[1]
	if v.State != rekey.VersionDestroyed || !sameTime(v.DestroyedAt, d.At) || !sameTime(v.RetiredAt, c.At) {
		t.Errorf("destroyed version %+v, want destroyed at %v and still retired at %v", v, d.At, c.At)
	}
	// Retiring again is stale.
	wantErr(t, "retire again", f.s.ChangeVersionState(f.ctx, retire(f, false), nil), rekey.ErrStale)
}

func testVersionsRequireUnused(t *testing.T, f *fixture) {
	l, deks := retiredFixture(t, f, 3)
	f.createKey(t, "b")
	f.insertDEKs(t, "b", 1, 5) // other keys' DEKs on "their" version 1 do not count

	n := f.auditLen(t)
	err := f.s.ChangeVersionState(f.ctx, retire(f, true), &l, event(rekey.AuditVersionRetired, "a", f.t0))
	var inUse *rekey.VersionInUseError
	if !errors.As(err, &inUse) {
		t.Fatalf("retire a version in use: %v, want *VersionInUseError", err)
	}
	if inUse.Key != "a" || inUse.Version != 1 || inUse.DEKs != 3 {
		t.Errorf("VersionInUseError = %+v, want key a version 1 with 3 DEKs", inUse)
	}
	if errors.Is(err, rekey.ErrStale) {
		t.Errorf("VersionInUseError matches ErrStale")
	}
	if v := f.versions(t, "a")[1]; v.State != rekey.VersionPendingRetirement {
		t.Errorf("refused retirement changed the state to %s", v.State)
	}
	if m := f.auditLen(t); m != n {
		t.Errorf("refused retirement appended %d events", m-n)
	}

	// Re-wrap two: the count follows.
	var swaps []rekey.DEKSwap
	for _, d := range deks[:2] {
		swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: randomBytes(40), NewVersion: 2})
	}
	if lost, err := f.s.SwapDEKs(f.ctx, swaps, l); err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs = %v, %v", lost, err)
	}
	err = f.s.ChangeVersionState(f.ctx, retire(f, true), &l)
	if !errors.As(err, &inUse) || inUse.DEKs != 1 {
		t.Fatalf("retire with one DEK left: %v, want *VersionInUseError with 1 DEK", err)
	}
	// Without RequireUnused the count is not consulted (e.g. compromised).
	comp := rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement}, To: rekey.VersionCompromised, At: f.t0}
	if err := f.s.ChangeVersionState(f.ctx, comp, &l); err != nil {
		t.Fatalf("mark compromised with DEKs left: %v", err)
	}
	// Re-wrap the last one: now it retires.
	last := deks[2]
	if lost, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{{ID: last.ID, OldWrapped: last.Wrapped, NewWrapped: randomBytes(40), NewVersion: 2}}, l); err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs(last) = %v, %v", lost, err)
	}
	c := retire(f, true)
	c.From = []rekey.VersionState{rekey.VersionCompromised}
	if err := f.s.ChangeVersionState(f.ctx, c, &l); err != nil {
		t.Fatalf("retire an unused version: %v", err)
	}
}

func testVersionsNotFound(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	for _, c := range []rekey.VersionChange{
		{Key: "a", Version: 9, From: []rekey.VersionState{rekey.VersionActive}, To: rekey.VersionRetired, At: f.t0},
		{Key: "nope", Version: 1, From: []rekey.VersionState{rekey.VersionActive}, To: rekey.VersionRetired, At: f.t0},
	} {
		wantErr(t, describe("ChangeVersionState(%s v%d)", c.Key, c.Version), f.s.ChangeVersionState(f.ctx, c, nil), rekey.ErrVersionNotFound)
	}
}

func testVersionsFence(t *testing.T, f *fixture) {
	l, _ := retiredFixture(t, f, 0)
	l2, err := f.s.AcquireLease(f.ctx, "a", "w2", time.Hour, f.at(2*time.Hour))
	if err != nil {
		t.Fatalf("AcquireLease(w2): %v", err)
	}
	n := f.auditLen(t)
	wantErr(t, "ChangeVersionState with a stale fence", f.s.ChangeVersionState(f.ctx, retire(f, true), &l, event(rekey.AuditVersionRetired, "a", f.t0)), rekey.ErrFenced)
	if v := f.versions(t, "a")[1]; v.State != rekey.VersionPendingRetirement {
		t.Errorf("fenced change wrote state %s", v.State)
	}
	if m := f.auditLen(t); m != n {
		t.Errorf("fenced change appended %d events", m-n)
	}
	if err := f.s.ChangeVersionState(f.ctx, retire(f, true), &l2); err != nil {
		t.Errorf("ChangeVersionState with the current fence: %v", err)
	}
}
