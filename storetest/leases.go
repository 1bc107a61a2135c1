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

func testLeasesGet(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	const ttl = time.Minute
	_, err := f.s.GetLease(f.ctx, "a")
	wantErr(t, "GetLease of a key never leased", err, rekey.ErrLeaseNotFound)
	_, err = f.s.GetLease(f.ctx, "no-such-key")
	wantErr(t, "GetLease of an unknown key", err, rekey.ErrLeaseNotFound)

	la, err := f.s.AcquireLease(f.ctx, "a", "A", ttl, f.t0)
	if err != nil {
		t.Fatalf("AcquireLease(A): %v", err)
	}
	got, err := f.s.GetLease(f.ctx, "a")
	if err != nil {
		t.Fatalf("GetLease: %v", err)
	}
	equal(t, "GetLease after acquire", normLease(got), normLease(la))

	// A renewal shows; an expired lease is still the current one (nobody
	// took over).
	la2, err := f.s.RenewLease(f.ctx, la, ttl, f.at(10*time.Second))
	if err != nil {
		t.Fatalf("RenewLease: %v", err)
	}
	got, err = f.s.GetLease(f.ctx, "a")
	if err != nil {
		t.Fatalf("GetLease after renew: %v", err)
	}
	equal(t, "GetLease after renew", normLease(got), normLease(la2))
	if !got.ExpiresAt.After(la.ExpiresAt) {
		t.Errorf("GetLease after renew expires at %v, want after %v", got.ExpiresAt, la.ExpiresAt)
	}

	// Released: none.
	if err := f.s.ReleaseLease(f.ctx, la2); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	_, err = f.s.GetLease(f.ctx, "a")
	wantErr(t, "GetLease after release", err, rekey.ErrLeaseNotFound)

	// The next holder shows.
	lb, err := f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(20*time.Second))
	if err != nil {
		t.Fatalf("AcquireLease(B): %v", err)
	}
	got, err = f.s.GetLease(f.ctx, "a")
	if err != nil {
		t.Fatalf("GetLease after takeover: %v", err)
	}
	equal(t, "GetLease after takeover", normLease(got), normLease(lb))
}

func testLeasesBreak(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	const ttl = time.Hour
	la := f.lease(t, "a", "A")
	audit := f.auditLen(t)

	current := func(what string, want rekey.Lease) {
		t.Helper()
		got, err := f.s.GetLease(f.ctx, "a")
		if err != nil {
			t.Fatalf("%s: GetLease: %v", what, err)
		}
		equal(t, what+": current lease", normLease(got), normLease(want))
	}

	// Anything but exactly the current lease is refused, and nothing
	// changes: the holder keeps the key, nobody else acquires it.
	refused := []struct {
		name string
		l    rekey.Lease
	}{
		{"a stale epoch", rekey.Lease{Key: "a", Owner: "A", Epoch: la.Epoch - 1, ExpiresAt: la.ExpiresAt}},
		{"a future epoch", rekey.Lease{Key: "a", Owner: "A", Epoch: la.Epoch + 1, ExpiresAt: la.ExpiresAt}},
		{"another owner", rekey.Lease{Key: "a", Owner: "B", Epoch: la.Epoch, ExpiresAt: la.ExpiresAt}},
		{"another expiry", rekey.Lease{Key: "a", Owner: "A", Epoch: la.Epoch, ExpiresAt: la.ExpiresAt.Add(-time.Second)}},
		{"another key", rekey.Lease{Key: "b", Owner: "A", Epoch: la.Epoch, ExpiresAt: la.ExpiresAt}},
	}
	for _, tc := range refused {
		err := f.s.BreakLease(f.ctx, tc.l, f.at(time.Second))
		wantErr(t, "BreakLease with "+tc.name, err, rekey.ErrStale)
		current("after BreakLease with "+tc.name, la)
		_, err = f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(time.Second))
		wantErr(t, "AcquireLease(B) after BreakLease with "+tc.name, err, rekey.ErrLeaseHeld)
	}
	wantErr(t, "BreakLease without a key", f.s.BreakLease(f.ctx, rekey.Lease{Owner: "A", Epoch: la.Epoch}, f.t0), rekey.ErrInvalidArgument)
	wantErr(t, "BreakLease without an owner", f.s.BreakLease(f.ctx, rekey.Lease{Key: "a", Epoch: la.Epoch}, f.t0), rekey.ErrInvalidArgument)
	current("after the refused breaks", la)

	// A renewal since the lease was read proves its holder lives: the
	// break of what was read is refused.
	la2, err := f.s.RenewLease(f.ctx, la, ttl, f.at(2*time.Second))
	if err != nil {
		t.Fatalf("RenewLease(A): %v", err)
	}
	wantErr(t, "BreakLease of the lease as it was before a renewal", f.s.BreakLease(f.ctx, la, f.at(3*time.Second)), rekey.ErrStale)
	current("after a refused break of a renewed lease", la2)

	// Breaking the current lease, long before it expires.
	if err := f.s.BreakLease(f.ctx, la2, f.at(4*time.Second)); err != nil {
		t.Fatalf("BreakLease(current): %v", err)
	}
	_, err = f.s.GetLease(f.ctx, "a")
	wantErr(t, "GetLease after a break", err, rekey.ErrLeaseNotFound)
	wantErr(t, "BreakLease of a broken lease", f.s.BreakLease(f.ctx, la2, f.at(4*time.Second)), rekey.ErrStale)

	// The broken holder's fence is dead at once...
	_, err = f.s.RenewLease(f.ctx, la2, ttl, f.at(5*time.Second))
	wantErr(t, "RenewLease of a broken lease", err, rekey.ErrFenced)
	r := rekey.Rotation{ID: rekey.NewID(), Key: "a", FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonManual, StartedAt: f.t0}
	wantErr(t, "CreateRotation with a broken lease", f.s.CreateRotation(f.ctx, r, la2, event(rekey.AuditRotationStarted, "a", f.t0)), rekey.ErrFenced)

	// ...and someone else acquires at once, long before the old expiry,
	// with a higher epoch; the old fence stays dead.
	lb, err := f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(6*time.Second))
	if err != nil {
		t.Fatalf("AcquireLease(B) after a break: %v", err)
	}
	if lb.Owner != "B" || lb.Epoch <= la2.Epoch {
		t.Errorf("lease after a break %+v, want owner B and an epoch above %d", lb, la2.Epoch)
	}
	current("after the takeover", lb)
	wantErr(t, "CreateRotation with the broken lease after a takeover", f.s.CreateRotation(f.ctx, r, la2), rekey.ErrFenced)
	_, err = f.s.RenewLease(f.ctx, la2, ttl, f.at(7*time.Second))
	wantErr(t, "RenewLease of the broken lease after a takeover", err, rekey.ErrFenced)
	_, err = f.s.AcquireLease(f.ctx, "a", "A", ttl, f.at(7*time.Second))
	wantErr(t, "AcquireLease(A) while B holds", err, rekey.ErrLeaseHeld)
	wantErr(t, "BreakLease of the old lease after a takeover", f.s.BreakLease(f.ctx, la2, f.at(7*time.Second)), rekey.ErrStale)
	current("after a stale break", lb)
	if n := f.auditLen(t); n != audit {
		t.Errorf("audit trail has %d events, want %d: a fenced write appended some", n, audit)
	}

	// The new holder writes.
	f.startRotation(t, "a", 1, lb)

	// Even the broken owner itself gets a new epoch: its old fence never
	// comes back.
	if err := f.s.BreakLease(f.ctx, lb, f.at(8*time.Second)); err != nil {
		t.Fatalf("BreakLease(B): %v", err)
	}
	lb2, err := f.s.AcquireLease(f.ctx, "a", "B", ttl, f.at(9*time.Second))
	if err != nil || lb2.Epoch <= lb.Epoch {
		t.Fatalf("AcquireLease(B) after its own lease was broken = %+v, %v; want an epoch above %d", lb2, err, lb.Epoch)
	}
	_, err = f.s.RenewLease(f.ctx, lb, ttl, f.at(10*time.Second))
	wantErr(t, "RenewLease of B's broken lease after B re-acquired", err, rekey.ErrFenced)

	// An expired lease nobody took over breaks the same way.
	lo, err := f.s.AcquireLease(f.ctx, "other", "A", time.Minute, f.t0)
	if err != nil {
		t.Fatalf("AcquireLease(other): %v", err)
	}
	if err := f.s.BreakLease(f.ctx, lo, f.at(time.Hour)); err != nil {
		t.Errorf("BreakLease of an expired lease: %v", err)
	}
	_, err = f.s.RenewLease(f.ctx, lo, ttl, f.at(time.Hour))
	wantErr(t, "RenewLease of a broken expired lease", err, rekey.ErrFenced)
}
