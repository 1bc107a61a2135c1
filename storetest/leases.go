package storetest

import (
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

func testLeasesLifecycle(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	const ttl = time.Minute
	la, err := f.s.AcquireLease(f.ctx, "a", "A", ttl, f.t0)
	if err != nil {
		t.Fatalf("AcquireLease(A): %v", err)
	}
	equal(t, "lease", normLease(la), rekey.Lease{Key: "a", Owner: "A", Epoch: la.Epoch, ExpiresAt: rekey.NormalizeTime(f.t0.Add(ttl))})
	if la.Epoch <= 0 {
		t.Errorf("first epoch %d, want > 0", la.Epoch)
	}

	// Another owner: held until expiry, whatever the time up to it.
	for _, d := range []time.Duration{0, time.Second, ttl - time.Microsecond} {
		_, err := f.s.AcquireLease(f.ctx, "a", "B", ttl, f.t0.Add(d))
		wantErr(t, describe("AcquireLease(B) at +%v", d), err, rekey.ErrLeaseHeld)
	}

	// The same owner re-acquires: same epoch, later expiry.
	la2, err := f.s.AcquireLease(f.ctx, "a", "A", ttl, f.at(30*time.Second))
	if err != nil {
		t.Fatalf("AcquireLease(A again): %v", err)
	}
	if la2.Epoch != la.Epoch || !sameTime(la2.ExpiresAt, f.at(30*time.Second+ttl)) {
		t.Errorf("re-acquire = epoch %d until %v, want epoch %d until %v", la2.Epoch, la2.ExpiresAt, la.Epoch, f.at(30*time.Second+ttl))
	}
	// la is still good for writes: same owner, same epoch.
	if _, err := f.s.RenewLease(f.ctx, la, ttl, f.at(31*time.Second)); err != nil {
		t.Errorf("RenewLease(A) after re-acquire: %v", err)
	}
	_, err = f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(90*time.Second))
	wantErr(t, "AcquireLease(B) before the renewed expiry", err, rekey.ErrLeaseHeld)

	// After expiry B takes over with a higher epoch; A is fenced.
	expiry := f.at(31*time.Second + ttl)
	lb, err := f.s.AcquireLease(f.ctx, "a", "B", ttl, expiry)
	if err != nil {
		t.Fatalf("AcquireLease(B) at expiry: %v", err)
	}
	if lb.Epoch <= la.Epoch || lb.Owner != "B" {
		t.Errorf("takeover lease %+v, want owner B and an epoch above %d", lb, la.Epoch)
	}
	_, err = f.s.RenewLease(f.ctx, la, ttl, expiry)
	wantErr(t, "RenewLease of the old lease", err, rekey.ErrFenced)
	_, err = f.s.AcquireLease(f.ctx, "a", "A", ttl, expiry.Add(time.Second))
	wantErr(t, "AcquireLease(A) while B holds", err, rekey.ErrLeaseHeld)

	// Renewing extends from now.
	lb2, err := f.s.RenewLease(f.ctx, lb, 10*ttl, expiry.Add(time.Second))
	if err != nil {
		t.Fatalf("RenewLease(B): %v", err)
	}
	if lb2.Epoch != lb.Epoch || !sameTime(lb2.ExpiresAt, expiry.Add(time.Second+10*ttl)) {
		t.Errorf("renewed lease %+v, want epoch %d until %v", lb2, lb.Epoch, expiry.Add(time.Second+10*ttl))
	}
	_, err = f.s.AcquireLease(f.ctx, "a", "C", ttl, expiry.Add(5*ttl))
	wantErr(t, "AcquireLease(C) before the renewed expiry", err, rekey.ErrLeaseHeld)

	// Expiry alone does not fence: B past its expiry, nobody took over.
	if _, err := f.s.RenewLease(f.ctx, lb2, ttl, expiry.Add(20*ttl)); err != nil {
		t.Errorf("RenewLease(B) after expiry without a takeover: %v", err)
	}

	// Epochs never go down, also on a key nobody held before.
	lo, err := f.s.AcquireLease(f.ctx, "other", "A", ttl, f.t0)
	if err != nil || lo.Epoch <= 0 {
		t.Errorf("AcquireLease(other) = %+v, %v", lo, err)
	}
}

func testLeasesRelease(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	const ttl = time.Hour
	la := f.lease(t, "a", "A")
	lb := rekey.Lease{Key: "a", Owner: "B", Epoch: la.Epoch + 7}

	// Releasing a lease that is not current is a no-op.
	if err := f.s.ReleaseLease(f.ctx, lb); err != nil {
		t.Errorf("ReleaseLease(not current): %v", err)
	}
	_, err := f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(time.Second))
	wantErr(t, "AcquireLease(B) after a no-op release", err, rekey.ErrLeaseHeld)

	if err := f.s.ReleaseLease(f.ctx, la); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	// A released lease fences its holder's writes...
	_, err = f.s.RenewLease(f.ctx, la, ttl, f.at(time.Second))
	wantErr(t, "RenewLease after release", err, rekey.ErrFenced)
	r := rekey.Rotation{ID: rekey.NewID(), Key: "a", FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonManual, StartedAt: f.t0}
	wantErr(t, "CreateRotation with a released lease", f.s.CreateRotation(f.ctx, r, la), rekey.ErrFenced)

	// ...and anyone acquires at once, with a higher epoch.
	lb, err = f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(2*time.Second))
	if err != nil {
		t.Fatalf("AcquireLease(B) after release: %v", err)
	}
	if lb.Epoch <= la.Epoch {
		t.Errorf("epoch after release %d, want above %d", lb.Epoch, la.Epoch)
	}
	// Releasing the old one again changes nothing.
	if err := f.s.ReleaseLease(f.ctx, la); err != nil {
		t.Errorf("ReleaseLease(old) again: %v", err)
	}
	if _, err := f.s.RenewLease(f.ctx, lb, ttl, f.at(3*time.Second)); err != nil {
		t.Errorf("RenewLease(B) after a stale release: %v", err)
	}
	// The same owner re-acquiring after its own release gets a new epoch.
	if err := f.s.ReleaseLease(f.ctx, lb); err != nil {
		t.Fatalf("ReleaseLease(B): %v", err)
	}
	lb2, err := f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(4*time.Second))
	if err != nil || lb2.Epoch <= lb.Epoch {
		t.Errorf("re-acquire after release = %+v, %v; want an epoch above %d", lb2, err, lb.Epoch)
	}
}

func testLeasesInvalid(t *testing.T, f *fixture) {
	tests := []struct {
		name       string
		key, owner string
		ttl        time.Duration
	}{
		{"no key", "", "A", time.Minute},
		{"no owner", "a", "", time.Minute},
		{"zero ttl", "a", "A", 0},
		{"negative ttl", "a", "A", -time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.s.AcquireLease(f.ctx, tc.key, tc.owner, tc.ttl, f.t0)
			wantErr(t, "AcquireLease", err, rekey.ErrInvalidArgument)
		})
	}
}
