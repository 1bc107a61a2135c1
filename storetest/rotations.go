package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

func testRotationsOneOpen(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	f.createKey(t, "b")
	la := f.lease(t, "a", "w1")
	lb := f.lease(t, "b", "w1")
	r1 := f.startRotation(t, "a", 1, la)

	second := rekey.Rotation{ID: rekey.NewID(), Key: "a", FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonManual, StartedAt: f.t0}
	before := f.auditLen(t)
	err := f.s.CreateRotation(f.ctx, second, la, event(rekey.AuditRotationStarted, "a", f.t0))
	wantErr(t, "second open rotation", err, rekey.ErrConflict)
	if n := f.auditLen(t); n != before {
		t.Errorf("a refused CreateRotation appended %d events", n-before)
	}
	if _, err := f.s.GetRotation(f.ctx, second.ID); !errors.Is(err, rekey.ErrRotationNotFound) {
		t.Errorf("GetRotation(refused) = %v, want ErrRotationNotFound", err)
	}

	// Another key is independent.
	f.startRotation(t, "b", 1, lb)

	// Each state short of done keeps the rotation open.
	r := r1
	for _, next := range []rekey.RotationState{rekey.RotationVersionCreated, rekey.RotationRewrapping, rekey.RotationCommitted} {
		r = f.advance(t, r, next, la, nil)
		second.ID = rekey.NewID()
		wantErr(t, "second rotation while "+string(next), f.s.CreateRotation(f.ctx, second, la), rekey.ErrConflict)
	}
	f.advance(t, r, rekey.RotationDone, la, nil)
	if err := f.s.CreateRotation(f.ctx, second, la); err != nil {
		t.Fatalf("CreateRotation after the first is done: %v", err)
	}
	open, err := f.s.OpenRotation(f.ctx, "a")
	if err != nil || open.ID != second.ID {
		t.Errorf("OpenRotation = %s, %v; want %s", open.ID, err, second.ID)
	}
}

func testRotationsCreateErrors(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	newRot := func(key string) rekey.Rotation {
		return rekey.Rotation{ID: rekey.NewID(), Key: key, FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonScheduled, StartedAt: f.t0}
	}
	lNope, err := f.s.AcquireLease(f.ctx, "nope", "w1", time.Hour, f.t0)
	if err != nil {
		t.Fatalf("AcquireLease(nope): %v", err)
	}
	existing := f.startRotation(t, "a", 1, l)
	f.advance(t, existing, rekey.RotationDone, l, nil)
	dupID := newRot("a")
	dupID.ID = existing.ID
	notClaimed := newRot("a")
	notClaimed.State = rekey.RotationRewrapping
	tests := []struct {
		name  string
		r     rekey.Rotation
		fence rekey.Lease
		want  error
	}{
		{"unknown key", newRot("nope"), lNope, rekey.ErrKeyNotFound},
		{"stale fence", newRot("a"), rekey.Lease{Key: "a", Owner: "w1", Epoch: l.Epoch + 1}, rekey.ErrFenced},
		{"fence of another key", newRot("a"), lNope, rekey.ErrFenced},
		{"duplicate id", dupID, l, rekey.ErrConflict},
		{"not claimed", notClaimed, l, rekey.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.auditLen(t)
			wantErr(t, "CreateRotation", f.s.CreateRotation(f.ctx, tc.r, tc.fence, event(rekey.AuditRotationStarted, tc.r.Key, f.t0)), tc.want)
			if n := f.auditLen(t); n != before {
				t.Errorf("a refused CreateRotation appended %d events", n-before)
			}
			if _, err := f.s.OpenRotation(f.ctx, "a"); !errors.Is(err, rekey.ErrRotationNotFound) {
				t.Errorf("a refused CreateRotation left an open rotation (%v)", err)
			}
		})
	}
}

func testRotationsAdvanceGuards(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := f.startRotation(t, "a", 1, l)
	stored := f.getRotation(t, r.ID)
	later := f.t0.Add(2 * time.Hour)
	l2, err := f.s.AcquireLease(f.ctx, "a", "w2", time.Hour, later)
	if err != nil {
		t.Fatalf("AcquireLease(w2): %v", err)
	}

	update := func(from rekey.RotationState, edit func(u *rekey.RotationUpdate)) rekey.RotationUpdate {
		u := rekey.RotationUpdate{
			Rotation:   r,
			FromState:  from,
			NewVersion: &rekey.KeyVersion{Key: "a", Version: 2, State: rekey.VersionCreated, CreatedAt: later},
			Events:     []rekey.AuditEvent{event(rekey.AuditVersionCreated, "a", later), event(rekey.AuditRewrapProgress, "a", later)},
		}
		u.Rotation.State = rekey.RotationVersionCreated
		u.Rotation.ToVersion = 2
		u.Rotation.LastError = "should not be written"
		if edit != nil {
			edit(&u)
		}
		return u
	}
	tests := []struct {
		name  string
		u     rekey.RotationUpdate
		fence rekey.Lease
		want  error
	}{
		{"wrong from state", update(rekey.RotationVersionCreated, nil), l2, rekey.ErrStale},
		{"stale fence", update(rekey.RotationClaimed, nil), l, rekey.ErrFenced},
		{"stale fence and wrong state", update(rekey.RotationVersionCreated, nil), l, rekey.ErrFenced},
		{"wrong from state, same state", update(rekey.RotationRewrapping, func(u *rekey.RotationUpdate) { u.Rotation.State = rekey.RotationRewrapping }), l2, rekey.ErrStale},
		{"unknown rotation", update(rekey.RotationClaimed, func(u *rekey.RotationUpdate) { u.Rotation.ID = rekey.NewID() }), l2, rekey.ErrRotationNotFound},
		{"backwards", update(rekey.RotationClaimed, func(u *rekey.RotationUpdate) {
			u.FromState, u.Rotation.State = rekey.RotationVersionCreated, rekey.RotationClaimed
		}), l2, rekey.ErrInvalidArgument},
		{"duplicate version", update(rekey.RotationClaimed, func(u *rekey.RotationUpdate) {
			u.NewVersion = &rekey.KeyVersion{Key: "a", Version: 1, State: rekey.VersionCreated, CreatedAt: later}
		}), l2, rekey.ErrConflict},
		{"activate unknown version", update(rekey.RotationClaimed, func(u *rekey.RotationUpdate) {
			u.Activate = &rekey.Activation{Version: 5, Previous: 1, ExpiresAt: later, RetireAfter: later}
		}), l2, rekey.ErrVersionNotFound},
		{"activate with a stale previous", update(rekey.RotationClaimed, func(u *rekey.RotationUpdate) {
			u.Activate = &rekey.Activation{Version: 2, Previous: 3, ExpiresAt: later, RetireAfter: later}
		}), l2, rekey.ErrStale},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.auditLen(t)
			wantErr(t, "AdvanceRotation", f.s.AdvanceRotation(f.ctx, tc.u, tc.fence), tc.want)
			equal(t, "rotation after a refused update", normRotation(f.getRotation(t, r.ID)), normRotation(stored))
			if vs := f.versions(t, "a"); len(vs) != 1 {
				t.Errorf("a refused update left %d versions", len(vs))
			}
			if k := f.getKey(t, "a"); k.ActiveVersion != 1 {
				t.Errorf("a refused update activated version %d", k.ActiveVersion)
			}
			if n := f.auditLen(t); n != before {
				t.Errorf("a refused update appended %d audit events", n-before)
			}
		})
	}
	// The current lease advances, and the rotation then carries it.
	u := update(rekey.RotationClaimed, func(u *rekey.RotationUpdate) { u.Rotation.LastError = "" })
	if err := f.s.AdvanceRotation(f.ctx, u, l2); err != nil {
		t.Fatalf("AdvanceRotation(current lease): %v", err)
	}
	got := f.getRotation(t, r.ID)
	if got.State != rekey.RotationVersionCreated || got.ToVersion != 2 || got.Owner != "w2" || got.Epoch != l2.Epoch {
		t.Errorf("after advance: state %s to %d owner %s epoch %d; want version_created to 2 owner w2 epoch %d", got.State, got.ToVersion, got.Owner, got.Epoch, l2.Epoch)
	}
}

func testRotationsNewVersion(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := f.addVersion(t, "a", 1, 2, l)
	vs := f.versions(t, "a")
	v2, ok := vs[2]
	if !ok {
		t.Fatalf("version 2 not stored: %+v", vs)
	}
	equal(t, "new version", normVersion(v2), rekey.KeyVersion{Key: "a", Version: 2, State: rekey.VersionCreated, CreatedAt: rekey.NormalizeTime(f.at(time.Minute))})
	if k := f.getKey(t, "a"); k.ActiveVersion != 1 {
		t.Errorf("recording a version activated it: active %d", k.ActiveVersion)
	}
	// Versions list in ascending order.
	list, err := f.s.ListVersions(f.ctx, "a")
	if err != nil || len(list) != 2 || list[0].Version != 1 || list[1].Version != 2 {
		t.Errorf("ListVersions = %+v, %v", list, err)
	}
	// A later step may not record the same number again.
	u := rekey.RotationUpdate{Rotation: r, FromState: r.State, NewVersion: &rekey.KeyVersion{Key: "a", Version: 2, CreatedAt: f.t0}}
	u.Rotation.State = rekey.RotationRewrapping
	wantErr(t, "NewVersion 2 again", f.s.AdvanceRotation(f.ctx, u, l), rekey.ErrConflict)
	if got := f.getRotation(t, r.ID); got.State != rekey.RotationVersionCreated {
		t.Errorf("a refused update moved the rotation to %s", got.State)
	}
}

func testRotationsActivate(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := f.addVersion(t, "a", 1, 2, l)
	r = f.advance(t, r, rekey.RotationRewrapping, l, nil)
	exp, retire, at := f.at(180*rekey.Day), f.at(7*rekey.Day), f.at(time.Hour)
	u := rekey.RotationUpdate{
		Rotation:  r,
		FromState: rekey.RotationRewrapping,
		Activate:  &rekey.Activation{Version: 2, Previous: 1, ExpiresAt: exp, RetireAfter: retire},
		Events: []rekey.AuditEvent{
			event(rekey.AuditRotationCommitted, "a", at),
			event(rekey.AuditVersionPendingRetirement, "a", at),
		},
	}
	u.Rotation.State = rekey.RotationCommitted
	u.Rotation.UpdatedAt = at
	if err := f.s.AdvanceRotation(f.ctx, u, l); err != nil {
		t.Fatalf("AdvanceRotation(activate): %v", err)
	}
	k := f.getKey(t, "a")
	if k.ActiveVersion != 2 || !sameTime(k.ExpiresAt, exp) {
		t.Errorf("key after commit: active %d expires %v; want 2, %v", k.ActiveVersion, k.ExpiresAt, rekey.NormalizeTime(exp))
	}
	vs := f.versions(t, "a")
	if v := vs[2]; v.State != rekey.VersionActive || v.ActivatedAt.IsZero() {
		t.Errorf("version 2 after commit: %+v; want active with ActivatedAt", v)
	}
	if v := vs[1]; v.State != rekey.VersionPendingRetirement || !sameTime(v.RetireAfter, retire) {
		t.Errorf("version 1 after commit: %+v; want pending_retirement, retire after %v", v, rekey.NormalizeTime(retire))
	}
	// New DEKs go to version 2 now, and no longer to version 1.
	f.insertDEKs(t, "a", 2, 1)
	wantErr(t, "InsertDEKs on the old version", f.s.InsertDEKs(f.ctx, []rekey.DEK{f.newDEK("a", 1)}), rekey.ErrVersionNotActive)
	if n := f.auditLen(t); n != 2 {
		t.Errorf("audit has %d events, want the 2 of the commit", n)
	}
}

func testRotationsActivateCompromised(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	c := rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionActive}, To: rekey.VersionCompromised, At: f.t0}
	if err := f.s.ChangeVersionState(f.ctx, c, &l, event(rekey.AuditVersionCompromised, "a", f.t0)); err != nil {
		t.Fatalf("ChangeVersionState(compromised): %v", err)
	}
	f.commitVersion(t, "a", 1, 2, l)
	vs := f.versions(t, "a")
	if vs[1].State != rekey.VersionCompromised {
		t.Errorf("compromised version 1 became %s at commit", vs[1].State)
	}
	if vs[2].State != rekey.VersionActive || f.getKey(t, "a").ActiveVersion != 2 {
		t.Errorf("version 2 not active after commit: %+v", vs[2])
	}
}

func testRotationsRoundTrip(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := rekey.Rotation{
		ID:          rekey.NewID(),
		Key:         "a",
		FromVersion: 1,
		State:       rekey.RotationClaimed,
		Reason:      rekey.ReasonEmergency,
		Note:        "leaked in ticket #42",
		Compromised: 1,
		StartedAt:   f.t0,
		UpdatedAt:   f.t0,
		Owner:       l.Owner,
		Epoch:       l.Epoch,
	}
	if err := f.s.CreateRotation(f.ctx, r, l); err != nil {
		t.Fatalf("CreateRotation: %v", err)
	}
	equal(t, "created rotation", normRotation(f.getRotation(t, r.ID)), normRotation(r))

	next := r
	next.State = rekey.RotationRewrapping
	next.ToVersion = 2
	next.Total, next.Done, next.Failed = 1000, 500, 2
	next.Cursor = rekey.NewID()
	next.FailedDEKs = []string{rekey.NewID(), rekey.NewID()}
	next.LastError = "unwrap dek: invalid ciphertext"
	next.UpdatedAt = f.at(time.Minute)
	if err := f.s.AdvanceRotation(f.ctx, rekey.RotationUpdate{Rotation: next, FromState: rekey.RotationClaimed}, l); err != nil {
		t.Fatalf("AdvanceRotation: %v", err)
	}
	equal(t, "advanced rotation", normRotation(f.getRotation(t, r.ID)), normRotation(next))

	// Immutable fields stay; an empty FailedDEKs clears the list.
	done := next
	done.State = rekey.RotationDone
	done.FromVersion = 9
	done.Reason = rekey.ReasonManual
	done.StartedAt = f.at(time.Hour)
	done.FailedDEKs = nil
	done.UpdatedAt = f.at(2 * time.Minute)
	done.FinishedAt = f.at(2 * time.Minute)
	if err := f.s.AdvanceRotation(f.ctx, rekey.RotationUpdate{Rotation: done, FromState: rekey.RotationRewrapping}, l); err != nil {
		t.Fatalf("AdvanceRotation(done): %v", err)
	}
	want := done
	want.FromVersion, want.Reason, want.StartedAt = r.FromVersion, r.Reason, r.StartedAt
	equal(t, "finished rotation", normRotation(f.getRotation(t, r.ID)), normRotation(want))
}

func testRotationsQuery(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	f.createKey(t, "b")
	la := f.lease(t, "a", "w1")
	lb := f.lease(t, "b", "w1")
	// a: three done rotations at t0+1h, +2h, +3h and an open one at +4h;
	// b: an open one at +2h30.
	create := func(key string, l rekey.Lease, at time.Duration, finish bool) rekey.Rotation {
		r := rekey.Rotation{ID: rekey.NewID(), Key: key, FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonScheduled, StartedAt: f.at(at), UpdatedAt: f.at(at), Owner: l.Owner, Epoch: l.Epoch}
		if err := f.s.CreateRotation(f.ctx, r, l); err != nil {
			t.Fatalf("CreateRotation(%s): %v", key, err)
		}
		if finish {
			r = f.advance(t, r, rekey.RotationDone, l, nil)
		}
		return r
	}
	a1 := create("a", la, time.Hour, true)
	a2 := create("a", la, 2*time.Hour, true)
	a3 := create("a", la, 3*time.Hour, true)
	a4 := create("a", la, 4*time.Hour, false)
	b1 := create("b", lb, 150*time.Minute, false)

	rotIDs := func(rs []rekey.Rotation) []string {
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = r.ID
		}
		return out
	}
	tests := []struct {
		name string
		q    rekey.RotationQuery
		want []rekey.Rotation
	}{
		{"all, newest first", rekey.RotationQuery{}, []rekey.Rotation{a4, a3, b1, a2, a1}},
		{"open only", rekey.RotationQuery{OpenOnly: true}, []rekey.Rotation{a4, b1}},
		{"key", rekey.RotationQuery{Key: "a"}, []rekey.Rotation{a4, a3, a2, a1}},
		{"key, open only", rekey.RotationQuery{Key: "b", OpenOnly: true}, []rekey.Rotation{b1}},
		{"since (inclusive)", rekey.RotationQuery{Since: f.at(2 * time.Hour)}, []rekey.Rotation{a4, a3, b1, a2}},
		{"since and key", rekey.RotationQuery{Key: "a", Since: f.at(150 * time.Minute)}, []rekey.Rotation{a4, a3}},
		{"limit", rekey.RotationQuery{Limit: 2}, []rekey.Rotation{a4, a3}},
		{"unknown key", rekey.RotationQuery{Key: "nope"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.s.ListRotations(f.ctx, tc.q)
			if err != nil {
				t.Fatalf("ListRotations: %v", err)
			}
			equal(t, "ids", rotIDs(got), rotIDs(tc.want))
		})
	}

	open, err := f.s.OpenRotation(f.ctx, "a")
	if err != nil || open.ID != a4.ID {
		t.Errorf("OpenRotation(a) = %s, %v; want %s", open.ID, err, a4.ID)
	}
	equal(t, "OpenRotation(a)", normRotation(open), normRotation(a4))
	_, err = f.s.GetRotation(f.ctx, rekey.NewID())
	wantErr(t, "GetRotation unknown", err, rekey.ErrRotationNotFound)
	f.createKey(t, "c")
	_, err = f.s.OpenRotation(f.ctx, "c")
	wantErr(t, "OpenRotation without one", err, rekey.ErrRotationNotFound)
	_, err = f.s.OpenRotation(f.ctx, "nope")
	wantErr(t, "OpenRotation unknown key", err, rekey.ErrRotationNotFound)
	if got := f.getRotation(t, a2.ID); got.State != rekey.RotationDone || got.FinishedAt.IsZero() {
		t.Errorf("done rotation %+v: want done with FinishedAt", got)
	}
}
