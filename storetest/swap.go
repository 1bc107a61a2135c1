package storetest

import (
	"bytes"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// swapFixture stores key "a" with version 2 created (not active), n DEKs on
// version 1, and returns the lease of the worker "w1".
func swapFixture(t *testing.T, f *fixture, n int) (rekey.Lease, []rekey.DEK) {
	t.Helper()
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	f.addVersion(t, "a", 1, 2, l)
	return l, f.insertDEKs(t, "a", 1, n)
}

// swapOf moves d to version 2, with d's version as its OldVersion hint,
// as the engine's swaps have.
func swapOf(d rekey.DEK) rekey.DEKSwap {
	return rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: randomBytes(40), NewVersion: 2, OldVersion: d.Version}
}

func testSwapCAS(t *testing.T, f *fixture) {
	l, deks := swapFixture(t, f, 6)
	f.createKey(t, "other")
	foreign := f.insertDEKs(t, "other", 1, 1)[0]

	// One good swap applies.
	good := swapOf(deks[0])
	lost, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{good}, l)
	if err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs(good) = %v, %v; want no loss", lost, err)
	}
	got := f.getDEK(t, deks[0].ID)
	if got.Version != 2 || !bytes.Equal(got.Wrapped, good.NewWrapped) {
		t.Errorf("after a good swap: version %d, wrapped changed %v", got.Version, bytes.Equal(got.Wrapped, good.NewWrapped))
	}
	if got.Key != "a" || got.Label != deks[0].Label || !sameTime(got.CreatedAt, deks[0].CreatedAt) {
		t.Errorf("a swap changed other fields: %+v", got)
	}
	if got.UpdatedAt.IsZero() {
		t.Errorf("a swap cleared UpdatedAt")
	}

	// The same swap again is stale now: lost, nothing changes.
	again := good
	again.NewWrapped = randomBytes(40)
	again.NewVersion = 1
	lost, err = f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{again}, l)
	if err != nil {
		t.Fatalf("SwapDEKs(stale): %v", err)
	}
	equal(t, "lost (stale)", lost, []string{good.ID})
	equal(t, "dek after a stale swap", normDEK(f.getDEK(t, deks[0].ID)), normDEK(got))

	// A mixed batch applies the good ones only and names the others, in order.
	stale := swapOf(deks[2])
	stale.OldWrapped = randomBytes(48)
	missing := rekey.DEKSwap{ID: rekey.NewID(), OldWrapped: []byte("x"), NewWrapped: []byte("y"), NewVersion: 2}
	ofOtherKey := rekey.DEKSwap{ID: foreign.ID, OldWrapped: foreign.Wrapped, NewWrapped: []byte("y"), NewVersion: 1}
	batch := []rekey.DEKSwap{swapOf(deks[1]), stale, swapOf(deks[3]), missing, ofOtherKey, swapOf(deks[4])}
	lost, err = f.s.SwapDEKs(f.ctx, batch, l)
	if err != nil {
		t.Fatalf("SwapDEKs(mixed): %v", err)
	}
	equal(t, "lost (mixed)", lost, []string{stale.ID, missing.ID, ofOtherKey.ID})
	for _, sw := range []rekey.DEKSwap{batch[0], batch[2], batch[5]} {
		d := f.getDEK(t, sw.ID)
		if d.Version != 2 || !bytes.Equal(d.Wrapped, sw.NewWrapped) {
			t.Errorf("dek %s: good swap of a mixed batch not applied", sw.ID)
		}
	}
	equal(t, "stale dek", normDEK(f.getDEK(t, deks[2].ID)), normDEK(deks[2]))
	equal(t, "dek of another key", normDEK(f.getDEK(t, foreign.ID)), normDEK(foreign))
	equal(t, "counts", f.count(t, "a"), map[int]int64{1: 2, 2: 4})

	// An empty batch is fine.
	if lost, err := f.s.SwapDEKs(f.ctx, nil, l); err != nil || len(lost) != 0 {
		t.Errorf("SwapDEKs(nil) = %v, %v", lost, err)
	}
}

func testSwapFenced(t *testing.T, f *fixture) {
	l, deks := swapFixture(t, f, 3)
	later := f.t0.Add(2 * time.Hour) // l (1 h) has expired
	l2, err := f.s.AcquireLease(f.ctx, "a", "w2", time.Hour, later)
	if err != nil {
		t.Fatalf("AcquireLease(w2): %v", err)
	}
	tests := []struct {
		name  string
		fence rekey.Lease
	}{
		{"old epoch", l},
		{"wrong owner", rekey.Lease{Key: "a", Owner: "w3", Epoch: l2.Epoch, ExpiresAt: l2.ExpiresAt}},
		{"other key", rekey.Lease{Key: "b", Owner: l2.Owner, Epoch: l2.Epoch, ExpiresAt: l2.ExpiresAt}},
		{"no lease", rekey.Lease{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lost, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{swapOf(deks[0]), swapOf(deks[1])}, tc.fence)
			wantErr(t, "SwapDEKs", err, rekey.ErrFenced)
			if len(lost) != 0 {
				t.Errorf("fenced SwapDEKs reported lost %v", lost)
			}
			for _, d := range deks {
				equal(t, "dek after a fenced swap", normDEK(f.getDEK(t, d.ID)), normDEK(d))
			}
		})
	}
	// The current lease still writes.
	if lost, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{swapOf(deks[0])}, l2); err != nil || len(lost) != 0 {
		t.Errorf("SwapDEKs(current lease) = %v, %v", lost, err)
	}
}

func testSwapInvalid(t *testing.T, f *fixture) {
	l, deks := swapFixture(t, f, 2)
	// A version the key does not have: an error, and nothing is written,
	// not even the good swap before it.
	bad := swapOf(deks[1])
	bad.NewVersion = 9
	_, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{swapOf(deks[0]), bad}, l)
	if err == nil {
		t.Errorf("SwapDEKs to a version the key does not have: no error")
	}
	for _, d := range deks {
		equal(t, "dek after a refused batch", normDEK(f.getDEK(t, d.ID)), normDEK(d))
	}
	empty := swapOf(deks[0])
	empty.NewWrapped = nil
	_, err = f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{empty}, l)
	wantErr(t, "SwapDEKs without new wrapped bytes", err, rekey.ErrInvalidArgument)
	equal(t, "dek after a refused batch", normDEK(f.getDEK(t, deks[0].ID)), normDEK(deks[0]))
}
