package status_test

import (
	"context"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/status"
	"github.com/rekeyhq/rekey/store/memstore"
)

func TestNewRotationViewProgress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		r    rekey.Rotation
		want float64
	}{
		{rekey.Rotation{State: rekey.RotationRewrapping, Total: 10, Done: 4, Failed: 1}, 0.5},
		{rekey.Rotation{State: rekey.RotationRewrapping, Total: 0}, 0},
		{rekey.Rotation{State: rekey.RotationRewrapping, Total: 3, Done: 5}, 1},
		{rekey.Rotation{State: rekey.RotationCommitted, Total: 10}, 1},
		{rekey.Rotation{State: rekey.RotationDone}, 1},
	} {
		if got := status.NewRotationView(tc.r).Progress; got != tc.want {
			t.Errorf("%+v: progress %v, want %v", tc.r, got, tc.want)
		}
	}
}

func TestPolicyViewNever(t *testing.T) {
	t.Parallel()
	p := status.NewPolicyView(rekey.DefaultPolicy())
	if p.RotationPeriod != "90d" || p.DestroyAfter != "never" || p.Grace != "7d" {
		t.Fatalf("%+v", p)
	}
}

// TestBuildCountsAndDue: Build reports DEKs per version, due/overdue from
// the clock, and the key totals.
func TestBuildCountsAndDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := memstore.New()
	kr := rekey.NewKeyring(s, map[string]rekey.KMS{"mem": memkms.New()}, rekey.WithClock(func() time.Time { return now }))
	p := rekey.DefaultPolicy()
	if _, err := kr.CreateKey(ctx, "payments", "mem", p); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.NewDEKs(ctx, "payments", "", 7); err != nil {
		t.Fatal(err)
	}
	st, err := status.Build(ctx, s, nil, now.Add(84*rekey.Day))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Keys) != 1 {
		t.Fatalf("keys: %+v", st.Keys)
	}
	k := st.Keys[0]
	if k.DEKs != 7 || len(k.Versions) != 1 || k.Versions[0].DEKs != 7 || !k.Due || !k.DueSoon || k.Overdue {
		t.Fatalf("day 84: %+v", k)
	}
	st, _ = status.Build(ctx, s, nil, now.Add(91*rekey.Day))
	if !st.Keys[0].Overdue || st.Keys[0].ExpiresIn >= 0 {
		t.Fatalf("day 91: %+v", st.Keys[0])
	}
	if _, err := status.Key(ctx, s, nil, "nosuch", now); err == nil {
		t.Fatal("unknown key: no error")
	}
	if st.Rotations == nil || st.Recent == nil {
		t.Fatal("empty rotation lists must encode as [], not null")
	}
}

// TestRetirementBlockedIsDecideVersion: status reports a version blocked
// exactly when rekey.DecideVersion does — past its grace with DEKs left
// and no rotation re-wrapping them, or compromised with DEKs left — in
// both Build and Key.
func TestRetirementBlockedIsDecideVersion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := memstore.New()
	if err := s.CreateKey(ctx, rekey.Key{Name: "k", Backend: "mem", ActiveVersion: 1, ExpiresAt: now, Policy: rekey.DefaultPolicy()},
		rekey.KeyVersion{Key: "k", Version: 1, State: rekey.VersionActive, ExpiresAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertDEKs(ctx, []rekey.DEK{{ID: "d1", Key: "k", Version: 1, Wrapped: []byte{1}}, {ID: "d2", Key: "k", Version: 1, Wrapped: []byte{2}}}); err != nil {
		t.Fatal(err)
	}
	lease, err := s.AcquireLease(ctx, "k", "w", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	r := rekey.Rotation{ID: "r", Key: "k", FromVersion: 1, Reason: rekey.ReasonScheduled, StartedAt: now}
	if err := s.CreateRotation(ctx, r, lease); err != nil {
		t.Fatal(err)
	}
	r.State, r.ToVersion, r.Total, r.Done, r.Failed = rekey.RotationCommitted, 2, 2, 0, 2
	if err := s.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Version: 2},
		Activate:   &rekey.Activation{Version: 2, ExpiresAt: now.Add(90 * rekey.Day), Previous: 1, RetireAfter: now.Add(rekey.Day)}}, lease); err != nil {
		t.Fatal(err)
	}
	blocked := func(at time.Time) (fromBuild, fromKey bool, progress float64) {
		t.Helper()
		st, err := status.Build(ctx, s, nil, at)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := status.Key(ctx, s, nil, "k", at)
		if err != nil {
			t.Fatal(err)
		}
		progress = -1
		if len(st.Rotations) == 1 {
			progress = st.Rotations[0].Progress
		}
		return st.Keys[0].Versions[0].RetirementBlocked, kv.Versions[0].RetirementBlocked, progress
	}
	// The rotation is open (committed): not blocked, even past the grace.
	if b, k, p := blocked(now.Add(2 * rekey.Day)); b || k || p != 1 {
		t.Errorf("rotation open: blocked %v/%v progress %v, want false/false 1", b, k, p)
	}
	r.State = rekey.RotationDone
	if err := s.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationCommitted}, lease); err != nil {
		t.Fatal(err)
	}
	if b, k, _ := blocked(now.Add(time.Hour)); b || k {
		t.Errorf("within the grace: blocked %v/%v", b, k)
	}
	if b, k, _ := blocked(now.Add(2 * rekey.Day)); !b || !k {
		t.Errorf("grace over, 2 DEKs left, no rotation: blocked %v/%v, want true", b, k)
	}
	// Compromised with DEKs and no rotation: blocked at once.
	if err := s.ChangeVersionState(ctx, rekey.VersionChange{Key: "k", Version: 1, From: []rekey.VersionState{rekey.VersionPendingRetirement},
		To: rekey.VersionCompromised, At: now}, nil); err != nil {
		t.Fatal(err)
	}
	if b, k, _ := blocked(now.Add(time.Hour)); !b || !k {
		t.Errorf("compromised with DEKs: blocked %v/%v, want true", b, k)
	}
}
