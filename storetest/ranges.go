package storetest

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// Range sharing (rekey.RangeSharer): a rotation's re-wrap split into id
// ranges, each committed under a lease of its own.

// sharer returns the store as a rekey.RangeSharer (every Store is one).
func (f *fixture) sharer(t *testing.T) rekey.RangeSharer {
	t.Helper()
	return f.s
}

// rangeFixture stores key "a" with version 2 created, n DEKs on version 1
// (returned in id order), and a rotation of "a" re-wrapping them that has
// already done 5; it returns the key's lease of "w1" and the rotation as
// stored.
func rangeFixture(t *testing.T, f *fixture, n int) (rekey.Lease, rekey.Rotation, []rekey.DEK) {
	t.Helper()
	l, r, deks := batchFixture(t, f, n)
	slices.SortFunc(deks, func(a, b rekey.DEK) int { return cmpString(a.ID, b.ID) })
	return l, r, deks
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// rangeLease acquires the lease of range idx of rotation r for owner at
// t0 + at, for an hour.
func (f *fixture) rangeLease(t *testing.T, r rekey.Rotation, idx int, owner string, at time.Duration) rekey.Lease {
	t.Helper()
	l, err := f.s.AcquireLease(f.ctx, rekey.RangeLeaseKey(r.ID, idx), owner, time.Hour, f.at(at))
	if err != nil {
		t.Fatalf("AcquireLease(range %d of %s, %s): %v", idx, r.ID, owner, err)
	}
	return l
}

// ranges returns ListRewrapRanges of rotation id.
func (f *fixture) ranges(t *testing.T, rs rekey.RangeSharer, id string) []rekey.RewrapRange {
	t.Helper()
	out, err := rs.ListRewrapRanges(f.ctx, id)
	if err != nil {
		t.Fatalf("ListRewrapRanges(%s): %v", id, err)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// split splits r at bounds with the key's lease l.
func (f *fixture) split(t *testing.T, rs rekey.RangeSharer, r rekey.Rotation, l rekey.Lease, bounds ...string) {
	t.Helper()
	if err := rs.SplitRewrap(f.ctx, r.ID, bounds, l); err != nil {
		t.Fatalf("SplitRewrap(%s, %v): %v", r.ID, bounds, err)
	}
}

// rangeCheckpoint is the checkpoint of a batch of range idx of r, with a
// rewrap.progress event counting no DEK yet.
func (f *fixture) rangeCheckpoint(r rekey.Rotation, idx int, cursor string) rekey.RangeCheckpoint {
	return rekey.RangeCheckpoint{
		RotationID: r.ID, Index: idx, Cursor: cursor,
		Events: []rekey.AuditEvent{event(rekey.AuditRewrapProgress, r.Key, f.at(time.Hour))},
		Now:    f.at(30 * time.Minute), // before the expiry of a lease acquired at 0 (1 h)
	}
}

// reread returns deks as the store holds them now.
func (f *fixture) reread(t *testing.T, deks []rekey.DEK) []rekey.DEK {
	t.Helper()
	out := make([]rekey.DEK, len(deks))
	for i, d := range deks {
		out[i] = f.getDEK(t, d.ID)
	}
	return out
}

// nothingWrittenRanges is nothingWritten with the rotation's ranges as
// they were too.
func (f *fixture) nothingWrittenRanges(t *testing.T, rs rekey.RangeSharer, deks []rekey.DEK, r rekey.Rotation, ranges []rekey.RewrapRange, auditN int) {
	t.Helper()
	f.nothingWritten(t, deks, r, auditN)
	equal(t, "ranges after a refused write", f.ranges(t, rs, r.ID), ranges)
}

func testRangesSplit(t *testing.T, f *fixture) {
	rs := f.sharer(t)
	l, r, deks := rangeFixture(t, f, 6)
	if got := f.ranges(t, rs, r.ID); len(got) != 0 {
		t.Fatalf("ranges of a rotation not split: %+v", got)
	}
	auditN := f.auditLen(t)
	b := []string{deks[1].ID, deks[3].ID, deks[4].ID}
	ev := event(rekey.AuditRewrapProgress, "a", f.at(time.Hour))
	if err := rs.SplitRewrap(f.ctx, r.ID, b, l, ev); err != nil {
		t.Fatalf("SplitRewrap: %v", err)
	}
	want := []rekey.RewrapRange{
		{RotationID: r.ID, Key: "a", Index: 0, From: "", To: b[0]},
		{RotationID: r.ID, Key: "a", Index: 1, From: b[0], To: b[1]},
		{RotationID: r.ID, Key: "a", Index: 2, From: b[1], To: b[2]},
		{RotationID: r.ID, Key: "a", Index: 3, From: b[2], To: ""},
	}
	got := f.ranges(t, rs, r.ID)
	equal(t, "ranges", got, want)
	for i, rg := range got {
		if k := rg.LeaseKey(); k != rekey.RangeLeaseKey(r.ID, i) {
			t.Errorf("range %d lease key %q", i, k)
		}
	}
	evs := f.allAudit(t)
	checkChain(t, evs)
	if len(evs) != auditN+1 || evs[auditN].Type != rekey.AuditRewrapProgress {
		t.Errorf("split appended %d events, want its 1", len(evs)-auditN)
	}
	// The rotation itself is unchanged.
	equal(t, "rotation after the split", normRotation(f.getRotation(t, r.ID)), normRotation(r))

	// No bound at all is one range holding everything.
	f.createKey(t, "b")
	lb := f.lease(t, "b", "w1")
	rb := f.addVersion(t, "b", 1, 2, lb)
	rb = f.advance(t, rb, rekey.RotationRewrapping, lb, nil)
	f.split(t, rs, rb, lb)
	equal(t, "ranges of a split without bounds", f.ranges(t, rs, rb.ID),
		[]rekey.RewrapRange{{RotationID: rb.ID, Key: "b", Index: 0}})
}

func testRangesSplitRefused(t *testing.T, f *fixture) {
	rs := f.sharer(t)
	l, r, deks := rangeFixture(t, f, 4)
	f.createKey(t, "other")
	lo := f.lease(t, "other", "w1")
	l2, err := f.s.AcquireLease(f.ctx, "a", "w2", time.Hour, f.at(2*time.Hour)) // l has expired
	if err != nil {
		t.Fatalf("AcquireLease(w2): %v", err)
	}
	ev := event(rekey.AuditRewrapProgress, "a", f.at(time.Hour))
	tests := []struct {
		name   string
		id     string
		bounds []string
		fence  rekey.Lease
		want   error
	}{
		{"old epoch of the key's lease", r.ID, []string{deks[1].ID}, l, rekey.ErrFenced},
		{"lease of another key", r.ID, []string{deks[1].ID}, lo, rekey.ErrFenced},
		{"a range's lease", r.ID, []string{deks[1].ID}, rekey.Lease{Key: rekey.RangeLeaseKey(r.ID, 0), Owner: "w2", Epoch: l2.Epoch}, rekey.ErrFenced},
		{"unsorted bounds", r.ID, []string{deks[2].ID, deks[1].ID}, l2, rekey.ErrInvalidArgument},
		{"repeated bound", r.ID, []string{deks[1].ID, deks[1].ID}, l2, rekey.ErrInvalidArgument},
		{"empty bound", r.ID, []string{"", deks[1].ID}, l2, rekey.ErrInvalidArgument},
		{"unknown rotation", rekey.NewID(), []string{deks[1].ID}, l2, rekey.ErrRotationNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auditN := f.auditLen(t)
			err := rs.SplitRewrap(f.ctx, tc.id, tc.bounds, tc.fence, ev)
			wantErr(t, "SplitRewrap", err, tc.want)
			f.nothingWrittenRanges(t, rs, deks, r, nil, auditN)
		})
	}

	// Split once; a second split is a conflict and changes nothing.
	f.split(t, rs, r, l2, deks[1].ID)
	ranges := f.ranges(t, rs, r.ID)
	auditN := f.auditLen(t)
	err = rs.SplitRewrap(f.ctx, r.ID, []string{deks[2].ID}, l2, ev)
	wantErr(t, "SplitRewrap (twice)", err, rekey.ErrConflict)
	f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)

	// A rotation that is not re-wrapping is not split.
	f.createKey(t, "c")
	lc := f.lease(t, "c", "w1")
	rc := f.addVersion(t, "c", 1, 2, lc)
	auditN = f.auditLen(t)
	err = rs.SplitRewrap(f.ctx, rc.ID, nil, lc, ev)
	wantErr(t, "SplitRewrap (version_created)", err, rekey.ErrStale)
	f.nothingWrittenRanges(t, rs, nil, f.getRotation(t, rc.ID), nil, auditN)
}

func testRangesDEKBounds(t *testing.T, f *fixture) {
	rs := f.sharer(t)
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	onV1 := f.insertDEKs(t, "a", 1, 25)
	f.commitVersion(t, "a", 1, 2, l)
	f.insertDEKs(t, "a", 2, 7) // on notVersion: not counted
	f.createKey(t, "other")
	f.insertDEKs(t, "other", 1, 5) // another key: not counted
	sorted := sortedIDs(onV1)
	tests := []struct {
		every int
		want  []string
	}{
		{10, []string{sorted[9], sorted[19]}},
		{25, []string{sorted[24]}},
		{26, nil},
		{12, []string{sorted[11], sorted[23]}},
		{1, sorted},
	}
	for _, tc := range tests {
		got, err := rs.DEKBounds(f.ctx, "a", 2, tc.every)
		if err != nil {
			t.Fatalf("DEKBounds(every %d): %v", tc.every, err)
		}
		if len(got) == 0 {
			got = nil
		}
		equal(t, describe("DEKBounds(every %d)", tc.every), got, tc.want)
	}
	// notVersion 1: the 7 DEKs on version 2 count, the 25 on 1 do not.
	if got, err := rs.DEKBounds(f.ctx, "a", 1, 3); err != nil || len(got) != 2 {
		t.Errorf("DEKBounds(a, not 1, every 3) = %v, %v; want 2 bounds", got, err)
	}
	if got, err := rs.DEKBounds(f.ctx, "missing", 1, 3); err != nil || len(got) != 0 {
		t.Errorf("DEKBounds(unknown key) = %v, %v; want none", got, err)
	}
	for _, every := range []int{0, -1} {
		_, err := rs.DEKBounds(f.ctx, "a", 2, every)
		wantErr(t, describe("DEKBounds(every %d)", every), err, rekey.ErrInvalidArgument)
	}
}

func testRangesCommit(t *testing.T, f *fixture) {
	rs := f.sharer(t)
	l, r, deks := rangeFixture(t, f, 20)
	f.split(t, rs, r, l, deks[9].ID)
	f.createKey(t, "other")
	foreign := f.insertDEKs(t, "other", 1, 1)[0]
	l0 := f.rangeLease(t, r, 0, "w2", 0)
	auditN := f.auditLen(t)

	good := []rekey.DEKSwap{swapOf(deks[0]), swapOf(deks[3]), swapOf(deks[9])} // 9 is the range's upper bound: inside
	outside := swapOf(deks[10])
	ofOtherKey := rekey.DEKSwap{ID: foreign.ID, OldWrapped: foreign.Wrapped, NewWrapped: []byte("y"), NewVersion: 1}
	stale := swapOf(deks[4])
	stale.OldWrapped = randomBytes(48)
	batch := []rekey.DEKSwap{good[0], outside, good[1], ofOtherKey, stale, good[2]}
	cp := f.rangeCheckpoint(r, 0, deks[9].ID)
	cp.Done = 1
	cp.FailedIDs = []string{deks[5].ID, deks[6].ID}
	cp.Events = append(cp.Events, event(rekey.AuditRewrapProgress, "a", f.at(time.Hour)))
	cp.Events[1].DEKs = 10
	lost, err := rs.CommitRangeBatch(f.ctx, batch, l0, cp)
	if err != nil {
		t.Fatalf("CommitRangeBatch: %v", err)
	}
	equal(t, "lost", lost, []string{outside.ID, ofOtherKey.ID, stale.ID})
	for _, sw := range good {
		if d := f.getDEK(t, sw.ID); d.Version != 2 || !bytes.Equal(d.Wrapped, sw.NewWrapped) {
			t.Errorf("dek %s: a swap inside the range was not applied (version %d)", sw.ID, d.Version)
		}
	}
	equal(t, "dek outside the range", normDEK(f.getDEK(t, deks[10].ID)), normDEK(deks[10]))
	equal(t, "dek of another key", normDEK(f.getDEK(t, foreign.ID)), normDEK(foreign))
	equal(t, "dek of a stale swap", normDEK(f.getDEK(t, deks[4].ID)), normDEK(deks[4]))

	// The range: cursor, done = 1 + 3 applied, failed = 2.
	rg := f.ranges(t, rs, r.ID)
	equal(t, "range 0 after a batch", rg[0], rekey.RewrapRange{RotationID: r.ID, Key: "a", Index: 0, To: deks[9].ID,
		Cursor: deks[9].ID, Done: 4, Failed: 2})
	equal(t, "range 1 after a batch of range 0", rg[1], rekey.RewrapRange{RotationID: r.ID, Key: "a", Index: 1, From: deks[9].ID})
	// The rotation: counters grown by as much; nothing else but UpdatedAt.
	got := f.getRotation(t, r.ID)
	want := r
	want.Done, want.Failed, want.FailedDEKs = r.Done+4, r.Failed+2, cp.FailedIDs
	want.UpdatedAt = got.UpdatedAt
	equal(t, "rotation after a range batch", normRotation(got), normRotation(want))
	if got.UpdatedAt.IsZero() || sameTime(got.UpdatedAt, r.UpdatedAt) {
		t.Errorf("a range batch left the rotation's UpdatedAt at %v", got.UpdatedAt)
	}
	evs := f.allAudit(t)
	checkChain(t, evs)
	if len(evs) != auditN+2 {
		t.Fatalf("audit has %d new events, want the 2 of the checkpoint", len(evs)-auditN)
	}
	if a, b := evs[auditN], evs[auditN+1]; a.DEKs != 3 || b.DEKs != 13 {
		t.Errorf("checkpoint events count %d and %d DEKs; want 3 and 13", a.DEKs, b.DEKs)
	}
	if cp.Events[0].DEKs != 0 || cp.Events[1].DEKs != 10 {
		t.Errorf("CommitRangeBatch changed the caller's events: %d and %d DEKs", cp.Events[0].DEKs, cp.Events[1].DEKs)
	}

	// The rotation keeps the first 100 failed ids.
	many := make([]string, 99)
	for i := range many {
		many[i] = fmt.Sprintf("failed-%03d", i)
	}
	cp2 := f.rangeCheckpoint(r, 0, deks[9].ID)
	cp2.FailedIDs = many
	if _, err := rs.CommitRangeBatch(f.ctx, nil, l0, cp2); err != nil {
		t.Fatalf("CommitRangeBatch(99 failed): %v", err)
	}
	got = f.getRotation(t, r.ID)
	equal(t, "failed ids kept", got.FailedDEKs, append(slices.Clone(cp.FailedIDs), many[:98]...))
	if got.Failed != r.Failed+101 || got.Done != r.Done+4 {
		t.Errorf("after 99 more failed: failed %d done %d; want %d and %d", got.Failed, got.Done, r.Failed+101, r.Done+4)
	}
	if rg := f.ranges(t, rs, r.ID)[0]; rg.Failed != 101 || rg.Done != 4 {
		t.Errorf("range 0 after 99 more failed: failed %d done %d; want 101 and 4", rg.Failed, rg.Done)
	}

	// A swap to a version the key lacks: refused, nothing written.
	ranges, rot, auditN, now := f.ranges(t, rs, r.ID), f.getRotation(t, r.ID), f.auditLen(t), f.reread(t, deks)
	bad := swapOf(deks[1])
	bad.NewVersion = 7
	_, err = rs.CommitRangeBatch(f.ctx, []rekey.DEKSwap{swapOf(deks[2]), bad}, l0, f.rangeCheckpoint(r, 0, deks[9].ID))
	wantErr(t, "CommitRangeBatch(missing version)", err, rekey.ErrVersionNotFound)
	f.nothingWrittenRanges(t, rs, now, rot, ranges, auditN)

	// The last batch finishes the range; the next one is stale.
	cp3 := f.rangeCheckpoint(r, 0, deks[9].ID)
	cp3.Finished = true
	if _, err := rs.CommitRangeBatch(f.ctx, []rekey.DEKSwap{swapOf(deks[1])}, l0, cp3); err != nil {
		t.Fatalf("CommitRangeBatch(finished): %v", err)
	}
	if rg := f.ranges(t, rs, r.ID)[0]; !rg.Finished || rg.Done != 5 {
		t.Errorf("range 0 after its last batch: finished %v done %d; want true and 5", rg.Finished, rg.Done)
	}
	ranges, rot, auditN, now = f.ranges(t, rs, r.ID), f.getRotation(t, r.ID), f.auditLen(t), f.reread(t, deks)
	_, err = rs.CommitRangeBatch(f.ctx, []rekey.DEKSwap{swapOf(deks[2])}, l0, f.rangeCheckpoint(r, 0, deks[9].ID))
	wantErr(t, "CommitRangeBatch(range finished)", err, rekey.ErrStale)
	f.nothingWrittenRanges(t, rs, now, rot, ranges, auditN)
}

func testRangesCommitFenced(t *testing.T, f *fixture) {
	rs := f.sharer(t)
	l, r, deks := rangeFixture(t, f, 6)
	f.split(t, rs, r, l, deks[2].ID)
	old := f.rangeLease(t, r, 0, "w2", 0)
	l1 := f.rangeLease(t, r, 1, "w2", 0)
	taken := f.rangeLease(t, r, 0, "w3", 2*time.Hour) // old (1 h) expired: w3 takes range 0 over
	if taken.Epoch <= old.Epoch {
		t.Fatalf("take-over epoch %d, not above %d", taken.Epoch, old.Epoch)
	}
	r = f.getRotation(t, r.ID)
	ranges := f.ranges(t, rs, r.ID)
	swaps := []rekey.DEKSwap{swapOf(deks[0]), swapOf(deks[1])}
	tests := []struct {
		name  string
		fence rekey.Lease
	}{
		{"range lease taken over", old},
		{"wrong owner", rekey.Lease{Key: taken.Key, Owner: "w2", Epoch: taken.Epoch}},
		{"lease of another range", l1},
		{"the key's lease", l},
		{"no lease", rekey.Lease{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auditN := f.auditLen(t)
			cp := f.rangeCheckpoint(r, 0, deks[1].ID)
			cp.Done, cp.FailedIDs = 1, []string{deks[2].ID}
			lost, err := rs.CommitRangeBatch(f.ctx, swaps, tc.fence, cp)
			wantErr(t, "CommitRangeBatch", err, rekey.ErrFenced)
			if len(lost) != 0 {
				t.Errorf("a fenced CommitRangeBatch reported lost %v", lost)
			}
			f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)
		})
	}
	// An expired range lease fences its holder even when nobody took it
	// over (a worker paused past its lease writes nothing on waking).
	for _, at := range []time.Duration{time.Hour, 90 * time.Minute} {
		auditN := f.auditLen(t)
		cp := f.rangeCheckpoint(r, 1, deks[4].ID)
		cp.Now = f.at(at)
		_, err := rs.CommitRangeBatch(f.ctx, []rekey.DEKSwap{swapOf(deks[4])}, l1, cp)
		wantErr(t, fmt.Sprintf("CommitRangeBatch(lease expired %v ago)", at-time.Hour), err, rekey.ErrFenced)
		f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)
	}
	// A released range lease fences too.
	if err := f.s.ReleaseLease(f.ctx, l1); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	auditN := f.auditLen(t)
	_, err := rs.CommitRangeBatch(f.ctx, []rekey.DEKSwap{swapOf(deks[4])}, l1, f.rangeCheckpoint(r, 1, deks[4].ID))
	wantErr(t, "CommitRangeBatch(released lease)", err, rekey.ErrFenced)
	f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)

	// The new holder writes; the rotation's owner and epoch stay the key
	// holder's.
	if lost, err := rs.CommitRangeBatch(f.ctx, swaps, taken, f.rangeCheckpoint(r, 0, deks[1].ID)); err != nil || len(lost) != 0 {
		t.Fatalf("CommitRangeBatch(new holder) = %v, %v", lost, err)
	}
	if got := f.getRotation(t, r.ID); got.Done != r.Done+2 || got.Owner != r.Owner || got.Epoch != r.Epoch || got.Cursor != r.Cursor {
		t.Errorf("rotation after the new holder's batch: done %d owner %s epoch %d cursor %q; want %d, %s, %d, %q",
			got.Done, got.Owner, got.Epoch, got.Cursor, r.Done+2, r.Owner, r.Epoch, r.Cursor)
	}
}

func testRangesCommitStale(t *testing.T, f *fixture) {
	rs := f.sharer(t)
	l, r, deks := rangeFixture(t, f, 4)
	f.split(t, rs, r, l, deks[1].ID)
	l0 := f.rangeLease(t, r, 0, "w2", 0)
	l7 := f.rangeLease(t, r, 7, "w2", 0)
	swaps := []rekey.DEKSwap{swapOf(deks[0])}

	ranges, auditN := f.ranges(t, rs, r.ID), f.auditLen(t)
	_, err := rs.CommitRangeBatch(f.ctx, swaps, l7, f.rangeCheckpoint(r, 7, deks[0].ID))
	wantErr(t, "CommitRangeBatch(no such range)", err, rekey.ErrStale)
	f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)

	ghost := rekey.Rotation{ID: rekey.NewID(), Key: "a"}
	lg := f.rangeLease(t, ghost, 0, "w2", 0)
	_, err = rs.CommitRangeBatch(f.ctx, swaps, lg, f.rangeCheckpoint(ghost, 0, deks[0].ID))
	wantErr(t, "CommitRangeBatch(unknown rotation)", err, rekey.ErrRotationNotFound)
	f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)

	// The key's holder commits the rotation: ranges are stale.
	r = f.advance(t, r, rekey.RotationCommitted, l, func(u *rekey.RotationUpdate) {
		u.Activate = &rekey.Activation{Version: 2, Previous: 1, ExpiresAt: f.at(180 * rekey.Day), RetireAfter: f.at(7 * rekey.Day)}
	})
	r = f.getRotation(t, r.ID)
	auditN = f.auditLen(t)
	_, err = rs.CommitRangeBatch(f.ctx, swaps, l0, f.rangeCheckpoint(r, 0, deks[0].ID))
	wantErr(t, "CommitRangeBatch(rotation committed)", err, rekey.ErrStale)
	f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)

	for _, cp := range []rekey.RangeCheckpoint{{Index: 0}, {RotationID: r.ID, Index: -1}, {RotationID: r.ID, Done: -1}} {
		_, err = rs.CommitRangeBatch(f.ctx, nil, l0, cp)
		wantErr(t, describe("CommitRangeBatch(%+v)", cp), err, rekey.ErrInvalidArgument)
	}
	_, err = rs.CommitRangeBatch(f.ctx, []rekey.DEKSwap{{ID: deks[0].ID}}, l0, f.rangeCheckpoint(r, 0, ""))
	wantErr(t, "CommitRangeBatch(swap without bytes)", err, rekey.ErrInvalidArgument)
	f.nothingWrittenRanges(t, rs, deks, r, ranges, auditN)
}

// testRangesConcurrent has two workers commit the batches of two ranges of
// one rotation at once: every swap applies, and the rotation's Done is the
// sum of both.
func testRangesConcurrent(t *testing.T, f *fixture) {
	const perRange, batch = 20, 4
	rs := f.sharer(t)
	l, r, deks := rangeFixture(t, f, 2*perRange)
	f.split(t, rs, r, l, deks[perRange-1].ID)
	auditN := f.auditLen(t)
	var wg sync.WaitGroup
	for idx := range 2 {
		lease := f.rangeLease(t, r, idx, fmt.Sprintf("worker-%d", idx), 0)
		mine := deks[idx*perRange : (idx+1)*perRange]
		wg.Go(func() {
			for i := 0; i < len(mine); i += batch {
				var swaps []rekey.DEKSwap
				for _, d := range mine[i : i+batch] {
					swaps = append(swaps, swapOf(d))
				}
				cp := f.rangeCheckpoint(r, idx, mine[i+batch-1].ID)
				cp.Finished = i+batch == len(mine)
				lost, err := rs.CommitRangeBatch(f.ctx, swaps, lease, cp)
				if err != nil || len(lost) != 0 {
					t.Errorf("range %d batch %d: CommitRangeBatch = %v, %v", idx, i/batch, lost, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := f.getRotation(t, r.ID); got.Done != r.Done+2*perRange {
		t.Errorf("rotation done %d, want %d + %d", got.Done, r.Done, 2*perRange)
	}
	for _, rg := range f.ranges(t, rs, r.ID) {
		if rg.Done != perRange || !rg.Finished {
			t.Errorf("range %d: done %d finished %v; want %d and true", rg.Index, rg.Done, rg.Finished, perRange)
		}
	}
	equal(t, "counts", f.count(t, "a"), map[int]int64{2: 2 * perRange})
	evs := f.allAudit(t)
	checkChain(t, evs)
	if len(evs) != auditN+2*perRange/batch {
		t.Errorf("audit has %d new events, want %d", len(evs)-auditN, 2*perRange/batch)
	}
}
