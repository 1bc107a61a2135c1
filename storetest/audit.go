package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// auditScenario runs one of every method that takes events and returns the
// events passed, in order.
func auditScenario(t *testing.T, f *fixture) []rekey.AuditEvent {
	t.Helper()
	var sent []rekey.AuditEvent
	ev := func(typ rekey.AuditType, key string, d time.Duration) rekey.AuditEvent {
		e := event(typ, key, f.at(d))
		sent = append(sent, e)
		return e
	}
	k, v := f.newKey("a")
	if err := f.s.CreateKey(f.ctx, k, v, ev(rekey.AuditKeyCreated, "a", 0)); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	kb, vb := f.newKey("b")
	if err := f.s.CreateKey(f.ctx, kb, vb, ev(rekey.AuditKeyCreated, "b", time.Second)); err != nil {
		t.Fatalf("CreateKey(b): %v", err)
	}
	if err := f.s.UpdateKeyPolicy(f.ctx, "a", rekey.DefaultPolicy(), f.at(rekey.Day), ev(rekey.AuditPolicyChanged, "a", 2*time.Second)); err != nil {
		t.Fatalf("UpdateKeyPolicy: %v", err)
	}
	l := f.lease(t, "a", "w1")
	r := rekey.Rotation{ID: rekey.NewID(), Key: "a", FromVersion: 1, State: rekey.RotationClaimed, Reason: rekey.ReasonManual, StartedAt: f.t0}
	if err := f.s.CreateRotation(f.ctx, r, l, ev(rekey.AuditRotationStarted, "a", 3*time.Second)); err != nil {
		t.Fatalf("CreateRotation: %v", err)
	}
	u := rekey.RotationUpdate{
		Rotation:   r,
		FromState:  rekey.RotationClaimed,
		NewVersion: &rekey.KeyVersion{Key: "a", Version: 2, State: rekey.VersionCreated, CreatedAt: f.t0},
		Events:     []rekey.AuditEvent{ev(rekey.AuditVersionCreated, "a", 4*time.Second), ev(rekey.AuditRewrapProgress, "a", 5*time.Second)},
	}
	u.Rotation.State = rekey.RotationVersionCreated
	u.Rotation.ToVersion = 2
	if err := f.s.AdvanceRotation(f.ctx, u, l); err != nil {
		t.Fatalf("AdvanceRotation: %v", err)
	}
	if err := f.s.AppendAudit(f.ctx, ev(rekey.AuditRotationFailed, "b", 6*time.Second), ev(rekey.AuditRetirementBlocked, "", 7*time.Second), ev(rekey.AuditRotationFailed, "a", 8*time.Second)); err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
	c := rekey.VersionChange{Key: "b", Version: 1, From: []rekey.VersionState{rekey.VersionActive}, To: rekey.VersionCompromised, At: f.t0}
	if err := f.s.ChangeVersionState(f.ctx, c, nil, ev(rekey.AuditVersionCompromised, "b", 9*time.Second)); err != nil {
		t.Fatalf("ChangeVersionState: %v", err)
	}
	if err := f.s.AppendAudit(f.ctx); err != nil {
		t.Fatalf("AppendAudit(): %v", err)
	}
	return sent
}

func testAuditChain(t *testing.T, f *fixture) {
	sent := auditScenario(t, f)
	got := f.allAudit(t)
	if len(got) != len(sent) {
		t.Fatalf("audit has %d events, want %d", len(got), len(sent))
	}
	checkChain(t, got)
	if got[0].PrevHash != rekey.GenesisHash {
		t.Errorf("first prev_hash %s, want the genesis hash", got[0].PrevHash)
	}
	// Appending goes on from the stored head.
	if err := f.s.AppendAudit(f.ctx, event(rekey.AuditRotationFailed, "a", f.at(time.Hour))); err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
	got = f.allAudit(t)
	checkChain(t, got)
	// The caller's events are not modified.
	for i, e := range sent {
		if e.Seq != 0 || e.Hash != "" || e.PrevHash != "" {
			t.Errorf("event %d passed in was modified: %+v", i, e)
		}
	}
}

func testAuditFields(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	full := rekey.AuditEvent{
		Time:             f.at(time.Hour),
		Type:             rekey.AuditRotationCommitted,
		Key:              "a",
		FromVersion:      3,
		ToVersion:        4,
		RotationID:       rekey.NewID(),
		DEKs:             1 << 40,
		Status:           "success",
		Error:            "none; \"quoted\"\nnewline ünïcode",
		Actor:            "worker-7@host",
		Reason:           "scheduled",
		BackendRequestID: "req-123",
	}
	noTime := rekey.AuditEvent{Type: rekey.AuditRotationFailed, Key: "a"}
	if err := f.s.AppendAudit(f.ctx, full, noTime); err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
	got := f.allAudit(t)
	if len(got) != 2 {
		t.Fatalf("audit has %d events, want 2", len(got))
	}
	want := full
	want.Chain(0, rekey.GenesisHash)
	equal(t, "event", normEvent(got[0]), normEvent(want))
	if got[1].Time.IsZero() {
		t.Errorf("an event without a time was stored without one")
	}
	checkChain(t, got)
	_, err := f.s.ListAudit(f.ctx, rekey.AuditQuery{})
	wantErr(t, "ListAudit", err, nil)
	wantErr(t, "AppendAudit without a type", f.s.AppendAudit(f.ctx, rekey.AuditEvent{Key: "a"}), rekey.ErrInvalidArgument)
	if n := f.auditLen(t); n != 2 {
		t.Errorf("a refused append left %d events, want 2", n)
	}
}

func testAuditQuery(t *testing.T, f *fixture) {
	sent := auditScenario(t, f)
	all := f.allAudit(t)
	seqs := func(evs []rekey.AuditEvent) []int64 {
		out := make([]int64, len(evs))
		for i, e := range evs {
			out[i] = e.Seq
		}
		return out
	}
	filter := func(keep func(e rekey.AuditEvent) bool) []int64 {
		var out []int64
		for _, e := range all {
			if keep(e) {
				out = append(out, e.Seq)
			}
		}
		return out
	}
	since := rekey.NormalizeTime(f.at(4 * time.Second))
	tests := []struct {
		name string
		q    rekey.AuditQuery
		want []int64
	}{
		{"all", rekey.AuditQuery{}, seqs(all)},
		{"key", rekey.AuditQuery{Key: "a"}, filter(func(e rekey.AuditEvent) bool { return e.Key == "a" })},
		{"key b", rekey.AuditQuery{Key: "b"}, filter(func(e rekey.AuditEvent) bool { return e.Key == "b" })},
		{"since (inclusive)", rekey.AuditQuery{Since: since}, filter(func(e rekey.AuditEvent) bool { return !e.Time.Before(since) })},
		{"after seq", rekey.AuditQuery{AfterSeq: 4}, seqs(all[4:])},
		{"limit", rekey.AuditQuery{Limit: 3}, []int64{1, 2, 3}},
		{"key, after seq, limit", rekey.AuditQuery{Key: "a", AfterSeq: 3, Limit: 2}, filter(func(e rekey.AuditEvent) bool { return e.Key == "a" && e.Seq > 3 })[:2]},
		{"key and since", rekey.AuditQuery{Key: "b", Since: since}, filter(func(e rekey.AuditEvent) bool { return e.Key == "b" && !e.Time.Before(since) })},
		{"after the last", rekey.AuditQuery{AfterSeq: int64(len(all))}, nil},
		{"unknown key", rekey.AuditQuery{Key: "nope"}, nil},
	}
	if len(all) != len(sent) {
		t.Fatalf("audit has %d events, want %d", len(all), len(sent))
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.s.ListAudit(f.ctx, tc.q)
			if err != nil {
				t.Fatalf("ListAudit(%+v): %v", tc.q, err)
			}
			if !slices.Equal(seqs(got), tc.want) {
				t.Errorf("seqs = %v, want %v", seqs(got), tc.want)
			}
			for _, e := range got {
				equal(t, "event", normEvent(e), normEvent(all[e.Seq-1]))
			}
		})
	}
	if !slices.IsSortedFunc(all, func(a, b rekey.AuditEvent) int { return int(a.Seq - b.Seq) }) {
		t.Errorf("ListAudit is not in seq order")
	}
}

func testAuditFailedWrites(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	r := f.startRotation(t, "a", 1, l)
	stale := rekey.Lease{Key: "a", Owner: "w1", Epoch: l.Epoch + 1}
	ev := event(rekey.AuditPolicyChanged, "a", f.t0)
	k, v := f.newKey("a")
	calls := []struct {
		name string
		call func() error
	}{
		{"CreateKey duplicate", func() error { return f.s.CreateKey(f.ctx, k, v, ev) }},
		{"UpdateKeyPolicy unknown", func() error { return f.s.UpdateKeyPolicy(f.ctx, "nope", rekey.DefaultPolicy(), f.t0, ev) }},
		{"CreateRotation open", func() error {
			r2 := r
			r2.ID = rekey.NewID()
			return f.s.CreateRotation(f.ctx, r2, l, ev)
		}},
		{"CreateRotation fenced", func() error {
			r2 := r
			r2.ID = rekey.NewID()
			return f.s.CreateRotation(f.ctx, r2, stale, ev)
		}},
		{"AdvanceRotation stale", func() error {
			u := rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationRewrapping, Events: []rekey.AuditEvent{ev, ev}}
			u.Rotation.State = rekey.RotationCommitted
			return f.s.AdvanceRotation(f.ctx, u, l)
		}},
		{"AdvanceRotation fenced", func() error {
			u := rekey.RotationUpdate{Rotation: r, FromState: rekey.RotationClaimed, Events: []rekey.AuditEvent{ev}}
			u.Rotation.State = rekey.RotationVersionCreated
			return f.s.AdvanceRotation(f.ctx, u, stale)
		}},
		{"ChangeVersionState stale", func() error {
			c := rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionRetired}, To: rekey.VersionDestroyed, At: f.t0}
			return f.s.ChangeVersionState(f.ctx, c, nil, ev)
		}},
		{"AppendAudit with an invalid event", func() error { return f.s.AppendAudit(f.ctx, ev, rekey.AuditEvent{}) }},
	}
	before := f.allAudit(t)
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err == nil {
				t.Fatalf("%s: no error", tc.name)
			}
			equal(t, "audit trail", f.allAudit(t), before)
		})
	}
}
