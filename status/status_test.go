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
	st, err := status.Build(ctx, s, now.Add(84*rekey.Day))
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
	st, _ = status.Build(ctx, s, now.Add(91*rekey.Day))
	if !st.Keys[0].Overdue || st.Keys[0].ExpiresIn >= 0 {
		t.Fatalf("day 91: %+v", st.Keys[0])
	}
	if _, err := status.Key(ctx, s, "nosuch", now); err == nil {
		t.Fatal("unknown key: no error")
	}
	if st.Rotations == nil || st.Recent == nil {
		t.Fatal("empty rotation lists must encode as [], not null")
	}
}
