package storetest

import (
	"bytes"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// appendEvents appends n events of key "a" and returns the whole trail.
func (f *fixture) appendEvents(t *testing.T, n int) []rekey.AuditEvent {
	t.Helper()
	evs := make([]rekey.AuditEvent, n)
	for i := range evs {
		evs[i] = event(rekey.AuditRewrapProgress, "a", f.at(time.Duration(i)*time.Second))
	}
	if err := f.s.AppendAudit(f.ctx, evs...); err != nil {
		t.Fatalf("AppendAudit(%d): %v", n, err)
	}
	return f.allAudit(t)
}

// checkpointOf returns an unsaved checkpoint of e.
func (f *fixture) checkpointOf(e rekey.AuditEvent, at time.Time) rekey.AuditCheckpoint {
	return rekey.AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, MAC: randomBytes(32), KeyID: "test/audit.checkpoint", CreatedAt: at}
}

func normCheckpoint(cp rekey.AuditCheckpoint) rekey.AuditCheckpoint {
	cp.CreatedAt = rekey.NormalizeTime(cp.CreatedAt)
	return cp
}

func normCheckpoints(cps []rekey.AuditCheckpoint) []rekey.AuditCheckpoint {
	var out []rekey.AuditCheckpoint
	for _, cp := range cps {
		out = append(out, normCheckpoint(cp))
	}
	return out
}

func (f *fixture) allCheckpoints(t *testing.T) []rekey.AuditCheckpoint {
	t.Helper()
	cps, err := f.s.ListAuditCheckpoints(f.ctx, 0, 0)
	if err != nil {
		t.Fatalf("ListAuditCheckpoints: %v", err)
	}
	return cps
}

func testCheckpointsRoundTrip(t *testing.T, f *fixture) {
	cps, err := f.s.ListAuditCheckpoints(f.ctx, 0, 0)
	wantErr(t, "ListAuditCheckpoints on an empty store", err, nil)
	if len(cps) != 0 {
		t.Errorf("an empty store lists %d checkpoints", len(cps))
	}
	trail := f.appendEvents(t, 6)
	// Written out of order: seq 4, then 2, then 6 without a time.
	cp4 := f.checkpointOf(trail[3], f.at(time.Hour))
	cp2 := f.checkpointOf(trail[1], f.at(2*time.Hour))
	cp6 := f.checkpointOf(trail[5], time.Time{})
	cp6.KeyID = ""
	for _, cp := range []rekey.AuditCheckpoint{cp4, cp2, cp6} {
		mustErr(t, describe("AppendAuditCheckpoint(%d)", cp.Seq), f.s.AppendAuditCheckpoint(f.ctx, cp), nil)
	}
	// The store keeps its own copy of the MAC.
	mac4 := bytes.Clone(cp4.MAC)
	cp4.MAC[0] ^= 0xff
	cp4.MAC = mac4

	got := f.allCheckpoints(t)
	if len(got) != 3 {
		t.Fatalf("ListAuditCheckpoints = %d checkpoints, want 3", len(got))
	}
	if got[2].CreatedAt.IsZero() {
		t.Errorf("a checkpoint without a time was stored without one")
	}
	cp6.CreatedAt = got[2].CreatedAt
	equal(t, "checkpoints", normCheckpoints(got), normCheckpoints([]rekey.AuditCheckpoint{cp2, cp4, cp6}))

	got[0].MAC[0] ^= 0xff
	again := f.allCheckpoints(t)
	if !bytes.Equal(again[0].MAC, cp2.MAC) {
		t.Errorf("changing a returned MAC changed the stored one")
	}

	tests := []struct {
		name     string
		afterSeq int64
		limit    int
		want     []int64
	}{
		{"all", 0, 0, []int64{2, 4, 6}},
		{"negative after", -5, 0, []int64{2, 4, 6}},
		{"after 2", 2, 0, []int64{4, 6}},
		{"after 3", 3, 0, []int64{4, 6}},
		{"limit", 0, 2, []int64{2, 4}},
		{"after and limit", 2, 1, []int64{4}},
		{"after the last", 6, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cps, err := f.s.ListAuditCheckpoints(f.ctx, tc.afterSeq, tc.limit)
			if err != nil {
				t.Fatalf("ListAuditCheckpoints(%d, %d): %v", tc.afterSeq, tc.limit, err)
			}
			var seqs []int64
			for _, cp := range cps {
				seqs = append(seqs, cp.Seq)
			}
			equal(t, "seqs", seqs, tc.want)
		})
	}

	last, err := f.s.LastAuditCheckpoint(f.ctx)
	mustErr(t, "LastAuditCheckpoint", err, nil)
	equal(t, "last checkpoint", normCheckpoint(last), normCheckpoint(cp6))
}

func testCheckpointsErrors(t *testing.T, f *fixture) {
	_, err := f.s.LastAuditCheckpoint(f.ctx)
	wantErr(t, "LastAuditCheckpoint on an empty store", err, rekey.ErrCheckpointNotFound)
	trail := f.appendEvents(t, 3)
	good := f.checkpointOf(trail[1], f.t0)
	mustErr(t, "AppendAuditCheckpoint", f.s.AppendAuditCheckpoint(f.ctx, good), nil)
	before := f.allCheckpoints(t)

	edit := func(fn func(cp *rekey.AuditCheckpoint)) rekey.AuditCheckpoint {
		cp := f.checkpointOf(trail[2], f.t0)
		fn(&cp)
		return cp
	}
	tests := []struct {
		name string
		cp   rekey.AuditCheckpoint
		want error
	}{
		{"duplicate seq", f.checkpointOf(trail[1], f.at(time.Hour)), rekey.ErrConflict},
		{"seq 0", edit(func(cp *rekey.AuditCheckpoint) { cp.Seq = 0 }), rekey.ErrInvalidArgument},
		{"negative seq", edit(func(cp *rekey.AuditCheckpoint) { cp.Seq = -1 }), rekey.ErrInvalidArgument},
		{"no hash", edit(func(cp *rekey.AuditCheckpoint) { cp.Hash = "" }), rekey.ErrInvalidArgument},
		{"no MAC", edit(func(cp *rekey.AuditCheckpoint) { cp.MAC = nil }), rekey.ErrInvalidArgument},
		{"seq beyond the trail", edit(func(cp *rekey.AuditCheckpoint) { cp.Seq = 4 }), rekey.ErrInvalidArgument},
		{"hash of another event", edit(func(cp *rekey.AuditCheckpoint) { cp.Hash = trail[0].Hash }), rekey.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "AppendAuditCheckpoint", f.s.AppendAuditCheckpoint(f.ctx, tc.cp), tc.want)
			equal(t, "checkpoints after a refused append", normCheckpoints(f.allCheckpoints(t)), normCheckpoints(before))
		})
	}
	last, err := f.s.LastAuditCheckpoint(f.ctx)
	mustErr(t, "LastAuditCheckpoint", err, nil)
	equal(t, "last checkpoint", normCheckpoint(last), normCheckpoint(good))
}
