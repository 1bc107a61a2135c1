package storetest

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// batchFixture stores key "a" with version 2 created, n DEKs on version 1
// and a rotation of "a" re-wrapping them that has already done 5; it
// returns the lease of "w1", the rotation as stored and the DEKs.
func batchFixture(t *testing.T, f *fixture, n int) (rekey.Lease, rekey.Rotation, []rekey.DEK) {
	t.Helper()
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := f.addVersion(t, "a", 1, 2, l)
	f.advance(t, r, rekey.RotationRewrapping, l, func(u *rekey.RotationUpdate) {
		u.Rotation.Total, u.Rotation.Done = int64(n)+5, 5
	})
	deks := f.insertDEKs(t, "a", 1, n)
	return l, f.getRotation(t, r.ID), deks
}

// batchCheckpoint returns the checkpoint of a batch of r that stays in
// re-wrapping, as the engine writes it: Done as before the batch, the
// cursor at cursor, and a rewrap.progress event that counts no DEK yet.
func (f *fixture) batchCheckpoint(r rekey.Rotation, cursor string) rekey.RotationUpdate {
	u := rekey.RotationUpdate{Rotation: r, FromState: r.State}
	u.Rotation.Cursor = cursor
	u.Rotation.UpdatedAt = f.at(time.Hour)
	u.Events = []rekey.AuditEvent{event(rekey.AuditRewrapProgress, r.Key, f.at(time.Hour))}
	return u
}

// nothingWritten fails unless deks, the rotation r and the audit trail
// (auditN events) are as they were.
func (f *fixture) nothingWritten(t *testing.T, deks []rekey.DEK, r rekey.Rotation, auditN int) {
	t.Helper()
	for _, d := range deks {
		equal(t, "dek after a refused batch", normDEK(f.getDEK(t, d.ID)), normDEK(d))
	}
	equal(t, "rotation after a refused batch", normRotation(f.getRotation(t, r.ID)), normRotation(r))
	if n := f.auditLen(t); n != auditN {
		t.Errorf("a refused batch appended %d audit events", n-auditN)
	}
}

func testBatchCommit(t *testing.T, f *fixture) {
	l, r, deks := batchFixture(t, f, 6)
	f.createKey(t, "other")
	foreign := f.insertDEKs(t, "other", 1, 1)[0]
	auditN := f.auditLen(t)

	stale := swapOf(deks[1])
	stale.OldWrapped = randomBytes(48)
	missing := rekey.DEKSwap{ID: rekey.NewID(), OldWrapped: []byte("x"), NewWrapped: []byte("y"), NewVersion: 2}
	ofOtherKey := rekey.DEKSwap{ID: foreign.ID, OldWrapped: foreign.Wrapped, NewWrapped: []byte("y"), NewVersion: 1}
	good := []rekey.DEKSwap{swapOf(deks[0]), swapOf(deks[2]), swapOf(deks[3])}
	batch := []rekey.DEKSwap{good[0], stale, good[1], missing, ofOtherKey, good[2]}
	cp := f.batchCheckpoint(r, deks[3].ID)
	cp.Events = append(cp.Events, event(rekey.AuditRewrapProgress, "a", f.at(time.Hour)))
	cp.Events[1].DEKs = 10
	lost, err := f.s.CommitBatch(f.ctx, batch, l, cp)
	if err != nil {
		t.Fatalf("CommitBatch: %v", err)
	}
	equal(t, "lost", lost, []string{stale.ID, missing.ID, ofOtherKey.ID})

	// The swaps that won are written, the others' rows are unchanged.
	for _, sw := range good {
		d := f.getDEK(t, sw.ID)
		if d.Version != 2 || !bytes.Equal(d.Wrapped, sw.NewWrapped) {
			t.Errorf("dek %s: a good swap of the batch was not applied (version %d)", sw.ID, d.Version)
		}
	}
	equal(t, "dek of a stale swap", normDEK(f.getDEK(t, deks[1].ID)), normDEK(deks[1]))
	equal(t, "dek of another key", normDEK(f.getDEK(t, foreign.ID)), normDEK(foreign))
	equal(t, "counts", f.count(t, "a"), map[int]int64{1: 3, 2: 3})

	// The checkpoint is written with the 3 applied counted in.
	want := cp.Rotation
	want.Done = r.Done + 3
	got := f.getRotation(t, r.ID)
	equal(t, "rotation after the batch", normRotation(got), normRotation(want))
	evs := f.allAudit(t)
	checkChain(t, evs)
	if len(evs) != auditN+2 {
		t.Fatalf("audit has %d new events, want the 2 of the checkpoint", len(evs)-auditN)
	}
	if a, b := evs[auditN], evs[auditN+1]; a.Type != rekey.AuditRewrapProgress || a.DEKs != 3 || b.DEKs != 13 {
		t.Errorf("checkpoint events: %s with %d DEKs, %s with %d; want rewrap.progress with 3 and 13", a.Type, a.DEKs, b.Type, b.DEKs)
	}
	// The caller's checkpoint is left as it was.
	if cp.Rotation.Done != r.Done || cp.Events[0].DEKs != 0 || cp.Events[1].DEKs != 10 {
		t.Errorf("CommitBatch changed the caller's checkpoint: done %d, event DEKs %d and %d", cp.Rotation.Done, cp.Events[0].DEKs, cp.Events[1].DEKs)
	}

	// The same swaps again all lose: the checkpoint is written, nothing is
	// added.
	cp2 := f.batchCheckpoint(got, deks[5].ID)
	lost, err = f.s.CommitBatch(f.ctx, good, l, cp2)
	if err != nil {
		t.Fatalf("CommitBatch(all lost): %v", err)
	}
	equal(t, "lost (all)", lost, []string{good[0].ID, good[1].ID, good[2].ID})
	got = f.getRotation(t, r.ID)
	if got.Done != r.Done+3 || got.Cursor != deks[5].ID {
		t.Errorf("after a batch that all lost: done %d cursor %s; want %d and %s", got.Done, got.Cursor, r.Done+3, deks[5].ID)
	}
	if evs := f.allAudit(t); evs[len(evs)-1].DEKs != 0 {
		t.Errorf("event of a batch that all lost counts %d DEKs", evs[len(evs)-1].DEKs)
	}

	// An empty batch is a plain checkpoint.
	cp3 := f.batchCheckpoint(got, deks[5].ID)
	cp3.Rotation.Failed = 1
	if lost, err := f.s.CommitBatch(f.ctx, nil, l, cp3); err != nil || len(lost) != 0 {
		t.Fatalf("CommitBatch(no swaps) = %v, %v", lost, err)
	}
	if got := f.getRotation(t, r.ID); got.Failed != 1 || got.Done != r.Done+3 {
		t.Errorf("after an empty batch: failed %d done %d; want 1 and %d", got.Failed, got.Done, r.Done+3)
	}
}

func testBatchStale(t *testing.T, f *fixture) {
	l, r, deks := batchFixture(t, f, 3)
	swaps := []rekey.DEKSwap{swapOf(deks[0]), swapOf(deks[1]), swapOf(deks[2])}
	tests := []struct {
		name string
		edit func(u *rekey.RotationUpdate)
	}{
		{"rotation left FromState", func(u *rekey.RotationUpdate) {
			u.FromState = rekey.RotationVersionCreated
		}},
		{"activation of a version no longer created", func(u *rekey.RotationUpdate) {
			u.Rotation.State = rekey.RotationCommitted
			u.Activate = &rekey.Activation{Version: 1, Previous: 1, ExpiresAt: f.at(180 * rekey.Day), RetireAfter: f.at(7 * rekey.Day)}
		}},
		{"activation over a stale previous version", func(u *rekey.RotationUpdate) {
			u.Rotation.State = rekey.RotationCommitted
			u.Activate = &rekey.Activation{Version: 2, Previous: 3, ExpiresAt: f.at(180 * rekey.Day), RetireAfter: f.at(7 * rekey.Day)}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auditN := f.auditLen(t)
			cp := f.batchCheckpoint(r, deks[2].ID)
			tc.edit(&cp)
			lost, err := f.s.CommitBatch(f.ctx, swaps, l, cp)
			wantErr(t, "CommitBatch", err, rekey.ErrStale)
			if len(lost) != 0 {
				t.Errorf("a stale CommitBatch reported lost %v", lost)
			}
			f.nothingWritten(t, deks, r, auditN)
			if k := f.getKey(t, "a"); k.ActiveVersion != 1 {
				t.Errorf("a stale CommitBatch activated version %d", k.ActiveVersion)
			}
		})
	}
	// The right FromState writes.
	if lost, err := f.s.CommitBatch(f.ctx, swaps, l, f.batchCheckpoint(r, deks[2].ID)); err != nil || len(lost) != 0 {
		t.Errorf("CommitBatch(current state) = %v, %v", lost, err)
	}
}

func testBatchFenced(t *testing.T, f *fixture) {
	l, r, deks := batchFixture(t, f, 3)
	f.createKey(t, "b")
	lb := f.lease(t, "b", "w2")
	l2, err := f.s.AcquireLease(f.ctx, "a", "w2", time.Hour, f.at(2*time.Hour)) // l (1 h) has expired
	if err != nil {
		t.Fatalf("AcquireLease(w2): %v", err)
	}
	swaps := []rekey.DEKSwap{swapOf(deks[0]), swapOf(deks[1])}
	tests := []struct {
		name  string
		fence rekey.Lease
	}{
		{"old epoch", l},
		{"wrong owner", rekey.Lease{Key: "a", Owner: "w3", Epoch: l2.Epoch, ExpiresAt: l2.ExpiresAt}},
		{"current lease of another key", lb},
		{"no lease", rekey.Lease{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auditN := f.auditLen(t)
			lost, err := f.s.CommitBatch(f.ctx, swaps, tc.fence, f.batchCheckpoint(r, deks[1].ID))
			wantErr(t, "CommitBatch", err, rekey.ErrFenced)
			if len(lost) != 0 {
				t.Errorf("a fenced CommitBatch reported lost %v", lost)
			}
			f.nothingWritten(t, deks, r, auditN)
		})
	}
	// The current lease writes, and the rotation then carries it.
	if lost, err := f.s.CommitBatch(f.ctx, swaps, l2, f.batchCheckpoint(r, deks[1].ID)); err != nil || len(lost) != 0 {
		t.Fatalf("CommitBatch(current lease) = %v, %v", lost, err)
	}
	if got := f.getRotation(t, r.ID); got.Owner != "w2" || got.Epoch != l2.Epoch || got.Done != r.Done+2 {
		t.Errorf("after the batch: owner %s epoch %d done %d; want w2, %d, %d", got.Owner, got.Epoch, got.Done, l2.Epoch, r.Done+2)
	}
}

func testBatchInvalid(t *testing.T, f *fixture) {
	l, r, deks := batchFixture(t, f, 2)
	good := swapOf(deks[0])
	toMissingVersion := swapOf(deks[1])
	toMissingVersion.NewVersion = 9
	noBytes := swapOf(deks[1])
	noBytes.NewWrapped = nil
	tests := []struct {
		name  string
		swaps []rekey.DEKSwap
		edit  func(u *rekey.RotationUpdate)
		want  error
	}{
		{"a version the key lacks", []rekey.DEKSwap{good, toMissingVersion}, nil, rekey.ErrVersionNotFound},
		{"no new wrapped bytes", []rekey.DEKSwap{good, noBytes}, nil, rekey.ErrInvalidArgument},
		{"unknown rotation", []rekey.DEKSwap{good}, func(u *rekey.RotationUpdate) { u.Rotation.ID = rekey.NewID() }, rekey.ErrRotationNotFound},
		{"backwards", []rekey.DEKSwap{good}, func(u *rekey.RotationUpdate) { u.Rotation.State = rekey.RotationClaimed }, rekey.ErrInvalidArgument},
		{"a version number used twice", []rekey.DEKSwap{good}, func(u *rekey.RotationUpdate) {
			u.NewVersion = &rekey.KeyVersion{Key: "a", Version: 2, State: rekey.VersionCreated}
		}, rekey.ErrConflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auditN := f.auditLen(t)
			cp := f.batchCheckpoint(r, deks[1].ID)
			if tc.edit != nil {
				tc.edit(&cp)
			}
			_, err := f.s.CommitBatch(f.ctx, tc.swaps, l, cp)
			wantErr(t, "CommitBatch", err, tc.want)
			f.nothingWritten(t, deks, r, auditN)
			if vs := f.versions(t, "a"); len(vs) != 2 {
				t.Errorf("a refused batch left %d versions", len(vs))
			}
		})
	}
}

func testVersionsExpiresAt(t *testing.T, f *fixture) {
	// Create: the first version runs until the key expires, unless it says
	// otherwise.
	k := f.createKey(t, "a")
	kb, vb := f.newKey("b")
	vb.ExpiresAt = f.at(10 * rekey.Day)
	if err := f.s.CreateKey(f.ctx, kb, vb); err != nil {
		t.Fatalf("CreateKey(b): %v", err)
	}
	if v := f.versions(t, "a")[1]; !sameTime(v.ExpiresAt, k.ExpiresAt) {
		t.Errorf("version 1 of a expires %v, want the key's %v", v.ExpiresAt, rekey.NormalizeTime(k.ExpiresAt))
	}
	if v := f.versions(t, "b")[1]; !sameTime(v.ExpiresAt, vb.ExpiresAt) {
		t.Errorf("version 1 of b expires %v, want its own %v", v.ExpiresAt, rekey.NormalizeTime(vb.ExpiresAt))
	}

	// A version that was never active has none, and may not be given one.
	l := f.lease(t, "a", "w1")
	r := f.addVersion(t, "a", 1, 2, l)
	if v := f.versions(t, "a")[2]; !v.ExpiresAt.IsZero() {
		t.Errorf("created version 2 expires %v, want no expiry", v.ExpiresAt)
	}
	u := rekey.RotationUpdate{Rotation: r, FromState: r.State, NewVersion: &rekey.KeyVersion{Key: "a", Version: 3, ExpiresAt: f.at(rekey.Day)}}
	wantErr(t, "NewVersion with an expiry", f.s.AdvanceRotation(f.ctx, u, l), rekey.ErrInvalidArgument)

	// Activation: the new version gets the activation's expiry, the
	// previous one keeps its own.
	exp2 := f.at(180 * rekey.Day)
	r = f.advance(t, r, rekey.RotationCommitted, l, func(u *rekey.RotationUpdate) {
		u.Activate = &rekey.Activation{Version: 2, Previous: 1, ExpiresAt: exp2, RetireAfter: f.at(7 * rekey.Day)}
	})
	f.advance(t, r, rekey.RotationDone, l, nil)
	vs := f.versions(t, "a")
	if !sameTime(vs[2].ExpiresAt, exp2) || !sameTime(vs[1].ExpiresAt, k.ExpiresAt) {
		t.Errorf("after activating 2: version 1 expires %v, 2 %v; want %v and %v", vs[1].ExpiresAt, vs[2].ExpiresAt,
			rekey.NormalizeTime(k.ExpiresAt), rekey.NormalizeTime(exp2))
	}

	// A policy change moves the active version only.
	exp3 := f.at(40 * rekey.Day)
	p := k.Policy
	p.RotationPeriod = 40 * rekey.Day
	if err := f.s.UpdateKeyPolicy(f.ctx, "a", p, exp3); err != nil {
		t.Fatalf("UpdateKeyPolicy: %v", err)
	}
	vs = f.versions(t, "a")
	if !sameTime(vs[2].ExpiresAt, exp3) || !sameTime(vs[1].ExpiresAt, k.ExpiresAt) {
		t.Errorf("after the policy change: version 1 expires %v, 2 %v; want %v (unchanged) and %v", vs[1].ExpiresAt, vs[2].ExpiresAt,
			rekey.NormalizeTime(k.ExpiresAt), rekey.NormalizeTime(exp3))
	}
	if v := f.versions(t, "b")[1]; !sameTime(v.ExpiresAt, vb.ExpiresAt) {
		t.Errorf("a policy change of a moved version 1 of b to %v", v.ExpiresAt)
	}

	// Activation through CommitBatch, and a retired version keeps its
	// expiry.
	r = f.addVersion(t, "a", 2, 3, l)
	exp4 := f.at(200 * rekey.Day)
	cp := rekey.RotationUpdate{Rotation: r, FromState: r.State,
		Activate: &rekey.Activation{Version: 3, Previous: 2, ExpiresAt: exp4, RetireAfter: f.at(8 * rekey.Day)}}
	cp.Rotation.State = rekey.RotationCommitted
	if _, err := f.s.CommitBatch(f.ctx, nil, l, cp); err != nil {
		t.Fatalf("CommitBatch(activate 3): %v", err)
	}
	c := rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement}, To: rekey.VersionRetired, At: f.at(9 * rekey.Day)}
	if err := f.s.ChangeVersionState(f.ctx, c, &l); err != nil {
		t.Fatalf("retire version 1: %v", err)
	}
	vs = f.versions(t, "a")
	got := []time.Time{vs[1].ExpiresAt, vs[2].ExpiresAt, vs[3].ExpiresAt}
	want := []time.Time{k.ExpiresAt, exp3, exp4}
	if !slices.EqualFunc(got, want, sameTime) {
		t.Errorf("version expiries %v, want %v", got, want)
	}
	if k := f.getKey(t, "a"); !sameTime(k.ExpiresAt, exp4) || k.ActiveVersion != 3 {
		t.Errorf("key after activating 3 by CommitBatch: active %d expires %v", k.ActiveVersion, k.ExpiresAt)
	}
}
