package storetest

import (
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// testMoveRoundTrip: a rotation's ToBackend and a new version's backend,
// reference and backend version come back as written; ToBackend never
// changes once stored.
func testMoveRoundTrip(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := rekey.Rotation{ID: rekey.NewID(), Key: "a", FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonMove,
		ToBackend: "hsm", StartedAt: f.t0, UpdatedAt: f.t0, Owner: l.Owner, Epoch: l.Epoch}
	if err := f.s.CreateRotation(f.ctx, r, l); err != nil {
		t.Fatalf("CreateRotation: %v", err)
	}
	got, err := f.s.GetRotation(f.ctx, r.ID)
	if err != nil {
		t.Fatalf("GetRotation: %v", err)
	}
	if got.ToBackend != "hsm" || got.Reason != rekey.ReasonMove {
		t.Errorf("rotation read back: to_backend %q reason %q, want hsm move", got.ToBackend, got.Reason)
	}
	r = f.advance(t, r, rekey.RotationVersionCreated, l, func(u *rekey.RotationUpdate) {
		u.Rotation.ToVersion = 2
		u.Rotation.ToBackend = "" // ignored: fixed at creation
		u.NewVersion = &rekey.KeyVersion{Key: "a", Version: 2, State: rekey.VersionCreated, CreatedAt: f.at(time.Minute),
			Backend: "hsm", BackendRef: "hsm-ref/a", BackendVersion: 1}
	})
	if got, err = f.s.OpenRotation(f.ctx, "a"); err != nil || got.ToBackend != "hsm" {
		t.Errorf("open rotation after an update that left ToBackend empty: %+v, %v; want to_backend hsm kept", got, err)
	}
	vs := f.versions(t, "a")
	if len(vs) != 2 {
		t.Fatalf("versions: %+v", vs)
	}
	if v := vs[2]; v.Backend != "hsm" || v.BackendRef != "hsm-ref/a" || v.BackendVersion != 1 {
		t.Errorf("new version read back %+v, want backend hsm, ref hsm-ref/a, backend version 1", v)
	}
	if v := vs[1]; v.Backend != "" || v.BackendRef != "" || v.BackendVersion != 0 {
		t.Errorf("version 1 before the move commits: %+v, want no backend of its own", v)
	}
	if k := f.getKey(t, "a"); k.Backend != "local" || k.BackendRef != "ref/a" {
		t.Errorf("key before the move commits: backend %q ref %q, want local ref/a", k.Backend, k.BackendRef)
	}
	_ = r
}

// testMoveActivate: activating a version on another backend moves the
// key there, and in the same write stamps the versions that named no
// backend with the key's old one, so each version still resolves to
// where it lives. Activating a version on the key's own backend changes
// no backend.
func testMoveActivate(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := f.startRotation(t, "a", 1, l)
	r = f.advance(t, r, rekey.RotationVersionCreated, l, func(u *rekey.RotationUpdate) {
		u.Rotation.ToVersion = 2
		u.NewVersion = &rekey.KeyVersion{Key: "a", Version: 2, State: rekey.VersionCreated, CreatedAt: f.at(time.Minute),
			Backend: "hsm", BackendRef: "hsm-ref/a", BackendVersion: 1}
	})
	r = f.advance(t, r, rekey.RotationCommitted, l, func(u *rekey.RotationUpdate) {
		u.Activate = &rekey.Activation{Version: 2, Previous: 1, ExpiresAt: f.at(180 * rekey.Day), RetireAfter: f.at(7 * rekey.Day)}
	})
	f.advance(t, r, rekey.RotationDone, l, nil)
	k := f.getKey(t, "a")
	if k.Backend != "hsm" || k.BackendRef != "hsm-ref/a" || k.ActiveVersion != 2 {
		t.Errorf("key after the move: %+v, want backend hsm ref hsm-ref/a active 2", k)
	}
	vs := f.versions(t, "a")
	want := []rekey.Placement{{Backend: "local", Ref: "ref/a", Version: 1}, {Backend: "hsm", Ref: "hsm-ref/a", Version: 1}}
	for _, v := range vs {
		if p := rekey.PlacementOf(k, v); p != want[v.Version-1] {
			t.Errorf("version %d resolves to %+v, want %+v (row %+v)", v.Version, p, want[v.Version-1], v)
		}
	}
	if vs[1].State != rekey.VersionPendingRetirement {
		t.Errorf("version 1 is %s, want pending_retirement", vs[1].State)
	}

	// An ordinary rotation on the new backend: nothing moves.
	r = f.startRotation(t, "a", 2, l)
	r = f.advance(t, r, rekey.RotationVersionCreated, l, func(u *rekey.RotationUpdate) {
		u.Rotation.ToVersion = 3
		u.NewVersion = &rekey.KeyVersion{Key: "a", Version: 3, State: rekey.VersionCreated, CreatedAt: f.at(time.Minute),
			Backend: "hsm", BackendRef: "hsm-ref/a", BackendVersion: 2}
	})
	r = f.advance(t, r, rekey.RotationCommitted, l, func(u *rekey.RotationUpdate) {
		u.Activate = &rekey.Activation{Version: 3, Previous: 2, ExpiresAt: f.at(270 * rekey.Day), RetireAfter: f.at(7 * rekey.Day)}
	})
	f.advance(t, r, rekey.RotationDone, l, nil)
	if k2 := f.getKey(t, "a"); k2.Backend != "hsm" || k2.BackendRef != "hsm-ref/a" || k2.ActiveVersion != 3 {
		t.Errorf("key after a rotation on its new backend: %+v", k2)
	}
	if v := f.versions(t, "a")[1]; v.Backend != "local" || v.BackendRef != "ref/a" {
		t.Errorf("version 1 after the next rotation: %+v, want still on local ref/a", v)
	}
}

// testMoveInvalidVersion: a new version with a backend version but no
// backend, or a negative backend version, is refused and writes nothing.
func testMoveInvalidVersion(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := f.startRotation(t, "a", 1, l)
	for _, nv := range []rekey.KeyVersion{
		{Key: "a", Version: 2, State: rekey.VersionCreated, BackendVersion: 1},
		{Key: "a", Version: 2, State: rekey.VersionCreated, Backend: "hsm", BackendVersion: -1},
	} {
		u := rekey.RotationUpdate{Rotation: r, FromState: r.State, NewVersion: &nv}
		u.Rotation.State = rekey.RotationVersionCreated
		u.Rotation.ToVersion = 2
		wantErr(t, "AdvanceRotation with a bad version", f.s.AdvanceRotation(f.ctx, u, l), rekey.ErrInvalidArgument)
	}
	if vs := f.versions(t, "a"); len(vs) != 1 {
		t.Errorf("refused versions were written: %+v", vs)
	}
}
