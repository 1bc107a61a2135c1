package status_test

import (
	"context"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/status"
	"github.com/rekeyhq/rekey/store/memstore"
)

// Rows of a DEK source gate the retirement in the status views as in the
// engine: version 1, past its grace with none of rekey's own DEKs left, is
// blocked when a source holds rows on it or rows of no known version, or
// cannot be counted; not when the sources' rows are all on version 2.
func TestRetirementBlockedCountsSourceRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := memstore.New()
	if err := s.CreateKey(ctx, rekey.Key{Name: "k", Backend: "mem", ActiveVersion: 1, ExpiresAt: now, Policy: rekey.DefaultPolicy()},
		rekey.KeyVersion{Key: "k", Version: 1, State: rekey.VersionActive, ExpiresAt: now}); err != nil {
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
	r.State, r.ToVersion = rekey.RotationCommitted, 2
	if err := s.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Version: 2},
		Activate:   &rekey.Activation{Version: 2, ExpiresAt: now.Add(90 * rekey.Day), Previous: 1, RetireAfter: now.Add(rekey.Day)}}, lease); err != nil {
		t.Fatal(err)
	}
	r.State = rekey.RotationDone
	if err := s.AdvanceRotation(ctx, rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationCommitted}, lease); err != nil {
		t.Fatal(err)
	}
	at := now.Add(2 * rekey.Day) // grace over
	blocked := func(sources []status.SourceCount) (fromBuild, fromKey bool) {
		t.Helper()
		opt := status.Options{SourceCounts: func(context.Context, string) []status.SourceCount { return sources }}
		st, err := status.BuildWith(ctx, s, nil, at, opt)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := status.KeyWith(ctx, s, nil, "k", at, opt)
		if err != nil {
			t.Fatal(err)
		}
		if len(kv.Sources) != len(sources) || len(st.Keys[0].Sources) != len(sources) {
			t.Fatalf("views carry %d/%d source counts, want %d", len(st.Keys[0].Sources), len(kv.Sources), len(sources))
		}
		return st.Keys[0].Versions[0].RetirementBlocked, kv.Versions[0].RetirementBlocked
	}
	for _, tc := range []struct {
		name    string
		sources []status.SourceCount
		want    bool
	}{
		{"no sources", nil, false},
		{"source rows on version 2 only", []status.SourceCount{{Source: "a", Versions: map[int]int64{2: 5}}}, false},
		{"source rows on version 1", []status.SourceCount{{Source: "a", Versions: map[int]int64{2: 5}}, {Source: "b", Versions: map[int]int64{1: 3}}}, true},
		{"source rows of no known version", []status.SourceCount{{Source: "a", Versions: map[int]int64{0: 1, 2: 5}}}, true},
		{"source cannot be counted", []status.SourceCount{{Source: "a", Error: "database down"}}, true},
	} {
		if b, k := blocked(tc.sources); b != tc.want || k != tc.want {
			t.Errorf("%s: blocked %v (status) / %v (key), want %v", tc.name, b, k, tc.want)
		}
	}
	if n := status.BlockingDEKs(2, []status.SourceCount{{Versions: map[int]int64{0: 1, 1: 3, 2: 9}}, {Error: "x"}}, 1); n != 2+3+1+1 {
		t.Errorf("BlockingDEKs = %d, want 7 (own 2, on v1 3, unknown 1, one source down)", n)
	}
}
