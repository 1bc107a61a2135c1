// Package storetest is the conformance suite every rekey.Store passes.
//
// A store's test file starts with
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) rekey.Store { return openTempStore(t) })
//	}
//
// The suite pins down the contract of rekey.Store beyond its doc comments,
// so that the engine behaves the same on every store:
//
//   - Times come back equal to rekey.NormalizeTime of what was written.
//   - Guarded writes (ErrStale, ErrFenced, ErrConflict, ErrVersionNotActive,
//     *VersionInUseError) write nothing, audit events included.
//   - A lease stays current until another owner acquires the key (which
//     increments the epoch) or it is released; expiry alone lets another
//     owner acquire, it does not fence. Writes fenced by a released lease
//     fail with ErrFenced. GetLease shows the current lease, expired or
//     not, and none once released or broken. BreakLease is a
//     compare-and-swap on the whole lease (owner, epoch, expiry): anything
//     else is ErrStale and changes nothing; a broken lease fences like a
//     released one, and the next owner gets a higher epoch at once.
//   - SwapDEKs only touches DEKs of fence.Key (others lose); a NewVersion the
//     key does not have is an error and nothing is written.
//   - CommitBatch writes its swaps and its checkpoint together or not at
//     all: the checkpoint's Done and its events' DEKs grow by the number of
//     swaps applied; fenced, stale or otherwise refused, nothing is
//     written, swaps included.
//   - A version's ExpiresAt is set when it becomes active (CreateKey: its
//     own, else the key's; activation: the Activation's), follows policy
//     changes while it is active, and is kept afterwards.
//   - Rotation Owner and Epoch are those of the fence of the last write.
//   - Audit events get Seq 1, 2, 3, … with no gap, PrevHash linking each to
//     the one before (rekey.GenesisHash for the first) and Hash ==
//     ComputeHash(); a zero event Time is set by the store.
//   - Audit checkpoints are kept by seq (one per seq), only for an event the
//     trail holds with that hash, and come back with their MAC and KeyID
//     as written; the store never shares a MAC slice with its caller.
//   - Wrap counts (rekey.WrapCounter) are per backend, ref and version,
//     start at 0, never pass the reservation's limit (a reservation is cut
//     to what is left; none left is a *rekey.UsageLimitError and changes
//     nothing), and concurrent reservations add up exactly.
package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// Run runs the conformance suite. newStore must return a new, empty store
// each time it is called, independent of every other (a new file, a new
// database or schema), because subtests run in parallel; Run closes it when
// the subtest ends, so Close must tolerate being called again by the
// caller's own cleanup.
func Run(t *testing.T, newStore func(t *testing.T) rekey.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, f *fixture)
	}{
		{"Ping", testPing},
		{"Keys/RoundTrip", testKeysRoundTrip},
		{"Keys/Errors", testKeysErrors},
		{"Keys/UpdatePolicy", testKeysUpdatePolicy},
		{"DEKs/InsertGet", testDEKsInsertGet},
		{"DEKs/InsertErrors", testDEKsInsertErrors},
		{"DEKs/List", testDEKsList},
		{"DEKs/ListPaging", testDEKsListPaging},
		{"DEKs/Count", testDEKsCount},
		{"DEKs/CountsAgree", testCountsAgree},
		{"DEKs/CountsConcurrent", testCountsConcurrent},
		{"Swap/CompareAndSwap", testSwapCAS},
		{"Swap/Fenced", testSwapFenced},
		{"Swap/Invalid", testSwapInvalid},
		{"Batch/Commit", testBatchCommit},
		{"Batch/Stale", testBatchStale},
		{"Batch/Fenced", testBatchFenced},
		{"Batch/Invalid", testBatchInvalid},
		{"Leases/Lifecycle", testLeasesLifecycle},
		{"Leases/Release", testLeasesRelease},
		{"Leases/Invalid", testLeasesInvalid},
		{"Leases/Get", testLeasesGet},
		{"Leases/Break", testLeasesBreak},
		{"Rotations/OneOpenPerKey", testRotationsOneOpen},
		{"Rotations/CreateErrors", testRotationsCreateErrors},
		{"Rotations/AdvanceGuards", testRotationsAdvanceGuards},
		{"Rotations/NewVersion", testRotationsNewVersion},
		{"Rotations/Activate", testRotationsActivate},
		{"Rotations/ActivateKeepsCompromised", testRotationsActivateCompromised},
		{"Rotations/Query", testRotationsQuery},
		{"Rotations/RoundTrip", testRotationsRoundTrip},
		{"Versions/Guard", testVersionsGuard},
		{"Versions/RequireUnused", testVersionsRequireUnused},
		{"Versions/NotFound", testVersionsNotFound},
		{"Versions/Fence", testVersionsFence},
		{"Versions/ExpiresAt", testVersionsExpiresAt},
		{"Move/RoundTrip", testMoveRoundTrip},
		{"Move/Activate", testMoveActivate},
		{"Move/InvalidVersion", testMoveInvalidVersion},
		{"Audit/Chain", testAuditChain},
		{"Audit/Fields", testAuditFields},
		{"Audit/Query", testAuditQuery},
		{"Audit/FailedWritesAppendNothing", testAuditFailedWrites},
		{"Audit/Checkpoints/RoundTrip", testCheckpointsRoundTrip},
		{"Audit/Checkpoints/Errors", testCheckpointsErrors},
		{"Concurrency/InsertSwapAudit", testConcurrency},
		{"Concurrency/Counter", testConcurrentCounter},
		{"Property/DEKModel", testPropertyDEKModel},
		{"Ranges/Split", testRangesSplit},
		{"Ranges/SplitRefused", testRangesSplitRefused},
		{"Ranges/DEKBounds", testRangesDEKBounds},
		{"Ranges/Commit", testRangesCommit},
		{"Ranges/CommitFenced", testRangesCommitFenced},
		{"Ranges/CommitStale", testRangesCommitStale},
		{"Ranges/Concurrent", testRangesConcurrent},
		{"WrapCounts/Reserve", testWrapCountsReserve},
		{"WrapCounts/Invalid", testWrapCountsInvalid},
		{"WrapCounts/Concurrent", testWrapCountsConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, setup(t, newStore))
		})
	}
}

// fixture is what every subtest starts with: a fresh store, a context and a
// fixed base time (with nanoseconds and a zone, so that normalisation shows).
type fixture struct {
	s   rekey.Store
	ctx context.Context
	t0  time.Time
}

func setup(t *testing.T, newStore func(t *testing.T) rekey.Store) *fixture {
	t.Helper()
	s := newStore(t)
	if s == nil {
		t.Fatal("newStore returned nil")
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &fixture{
		s:   s,
		ctx: t.Context(),
		t0:  time.Date(2031, 3, 4, 5, 6, 7, 123456789, time.FixedZone("UTC+1", 3600)),
	}
}

// at returns t0 + d.
func (f *fixture) at(d time.Duration) time.Time { return f.t0.Add(d) }

// newKey returns an unsaved key called name with version 1 active.
func (f *fixture) newKey(name string) (rekey.Key, rekey.KeyVersion) {
	k := rekey.Key{
		Name:          name,
		Backend:       "local",
		BackendRef:    "ref/" + name,
		ActiveVersion: 1,
		ExpiresAt:     f.at(90 * rekey.Day),
		Policy:        rekey.DefaultPolicy(),
		CreatedAt:     f.t0,
		UpdatedAt:     f.t0,
	}
	v := rekey.KeyVersion{Key: name, Version: 1, State: rekey.VersionActive, CreatedAt: f.t0, ActivatedAt: f.t0}
	return k, v
}

// createKey stores a key called name with version 1 active.
func (f *fixture) createKey(t *testing.T, name string) rekey.Key {
	t.Helper()
	k, v := f.newKey(name)
	if err := f.s.CreateKey(f.ctx, k, v); err != nil {
		t.Fatalf("CreateKey(%s): %v", name, err)
	}
	return k
}

// lease acquires the lease on key for owner at t0.
func (f *fixture) lease(t *testing.T, key, owner string) rekey.Lease {
	t.Helper()
	l, err := f.s.AcquireLease(f.ctx, key, owner, time.Hour, f.t0)
	if err != nil {
		t.Fatalf("AcquireLease(%s, %s): %v", key, owner, err)
	}
	return l
}

// newDEK returns an unsaved DEK of key on version, with random wrapped bytes.
func (f *fixture) newDEK(key string, version int) rekey.DEK {
	return rekey.DEK{
		ID:        rekey.NewID(),
		Key:       key,
		Version:   version,
		Wrapped:   randomBytes(48),
		Label:     "label-" + key,
		CreatedAt: f.t0,
		UpdatedAt: f.t0,
	}
}

// insertDEKs stores n new DEKs of key on version and returns them.
func (f *fixture) insertDEKs(t *testing.T, key string, version, n int) []rekey.DEK {
	t.Helper()
	deks := make([]rekey.DEK, n)
	for i := range deks {
		deks[i] = f.newDEK(key, version)
	}
	if err := f.s.InsertDEKs(f.ctx, deks); err != nil {
		t.Fatalf("InsertDEKs(%s v%d, %d): %v", key, version, n, err)
	}
	return deks
}

// startRotation creates a claimed rotation of key from version from.
func (f *fixture) startRotation(t *testing.T, key string, from int, l rekey.Lease) rekey.Rotation {
	t.Helper()
	r := rekey.Rotation{
		ID:          rekey.NewID(),
		Key:         key,
		FromVersion: from,
		State:       rekey.RotationClaimed,
		Reason:      rekey.ReasonScheduled,
		StartedAt:   f.t0,
		UpdatedAt:   f.t0,
		Owner:       l.Owner,
		Epoch:       l.Epoch,
	}
	if err := f.s.CreateRotation(f.ctx, r, l); err != nil {
		t.Fatalf("CreateRotation(%s): %v", key, err)
	}
	return r
}

// advance moves r from its state to next, applying edit to the update.
func (f *fixture) advance(t *testing.T, r rekey.Rotation, next rekey.RotationState, l rekey.Lease, edit func(u *rekey.RotationUpdate)) rekey.Rotation {
	t.Helper()
	u := rekey.RotationUpdate{Rotation: r, FromState: r.State}
	u.Rotation.State = next
	u.Rotation.UpdatedAt = f.at(time.Minute)
	if edit != nil {
		edit(&u)
	}
	if err := f.s.AdvanceRotation(f.ctx, u, l); err != nil {
		t.Fatalf("AdvanceRotation(%s %s -> %s): %v", r.Key, r.State, next, err)
	}
	return u.Rotation
}

// addVersion records version v of key (state created) through a rotation
// and returns the rotation, in state version_created.
func (f *fixture) addVersion(t *testing.T, key string, from, v int, l rekey.Lease) rekey.Rotation {
	t.Helper()
	r := f.startRotation(t, key, from, l)
	return f.advance(t, r, rekey.RotationVersionCreated, l, func(u *rekey.RotationUpdate) {
		u.Rotation.ToVersion = v
		u.NewVersion = &rekey.KeyVersion{Key: key, Version: v, State: rekey.VersionCreated, CreatedAt: f.at(time.Minute)}
	})
}

// commitVersion makes version v of key active (from, previously active,
// goes to pending retirement) with a complete rotation, and returns it done.
func (f *fixture) commitVersion(t *testing.T, key string, from, v int, l rekey.Lease) rekey.Rotation {
	t.Helper()
	r := f.addVersion(t, key, from, v, l)
	r = f.advance(t, r, rekey.RotationCommitted, l, func(u *rekey.RotationUpdate) {
		u.Activate = &rekey.Activation{Version: v, Previous: from, ExpiresAt: f.at(180 * rekey.Day), RetireAfter: f.at(7 * rekey.Day)}
	})
	return f.advance(t, r, rekey.RotationDone, l, nil)
}

// allAudit returns the whole audit trail.
func (f *fixture) allAudit(t *testing.T) []rekey.AuditEvent {
	t.Helper()
	var out []rekey.AuditEvent
	var after int64
	for {
		page, err := f.s.ListAudit(f.ctx, rekey.AuditQuery{AfterSeq: after, Limit: 1000})
		if err != nil {
			t.Fatalf("ListAudit: %v", err)
		}
		out = append(out, page...)
		if len(page) < 1000 {
			return out
		}
		after = page[len(page)-1].Seq
	}
}

// auditLen returns the number of audit events.
func (f *fixture) auditLen(t *testing.T) int {
	t.Helper()
	return len(f.allAudit(t))
}

// count returns CountDEKs of key.
func (f *fixture) count(t *testing.T, key string) map[int]int64 {
	t.Helper()
	c, err := f.s.CountDEKs(f.ctx, key)
	if err != nil {
		t.Fatalf("CountDEKs(%s): %v", key, err)
	}
	return c
}

func (f *fixture) getKey(t *testing.T, name string) rekey.Key {
	t.Helper()
	k, err := f.s.GetKey(f.ctx, name)
	if err != nil {
		t.Fatalf("GetKey(%s): %v", name, err)
	}
	return k
}

func (f *fixture) getDEK(t *testing.T, id string) rekey.DEK {
	t.Helper()
	d, err := f.s.GetDEK(f.ctx, id)
	if err != nil {
		t.Fatalf("GetDEK(%s): %v", id, err)
	}
	return d
}

func (f *fixture) getRotation(t *testing.T, id string) rekey.Rotation {
	t.Helper()
	r, err := f.s.GetRotation(f.ctx, id)
	if err != nil {
		t.Fatalf("GetRotation(%s): %v", id, err)
	}
	return r
}

// versions returns ListVersions of key as a map by number.
func (f *fixture) versions(t *testing.T, key string) map[int]rekey.KeyVersion {
	t.Helper()
	vs, err := f.s.ListVersions(f.ctx, key)
	if err != nil {
		t.Fatalf("ListVersions(%s): %v", key, err)
	}
	out := make(map[int]rekey.KeyVersion, len(vs))
	for _, v := range vs {
		out[v.Version] = v
	}
	return out
}

// wantErr fails unless err matches target (errors.Is); a nil target wants
// no error.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	switch {
	case target == nil && err != nil:
		t.Errorf("%s: unexpected error: %v", what, err)
	case target != nil && err == nil:
		t.Errorf("%s: got no error, want %v", what, target)
	case target != nil && !errors.Is(err, target):
		t.Errorf("%s: got error %v, want one matching %v", what, err, target)
	}
}

// mustErr is wantErr that stops the test.
func mustErr(t *testing.T, what string, err, target error) {
	t.Helper()
	wantErr(t, what, err, target)
	if t.Failed() {
		t.FailNow()
	}
}

// equal fails when got and want differ (reflect.DeepEqual).
func equal(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// Normalisers: they put every time of a value into the form NormalizeTime
// gives, so that values compare with reflect.DeepEqual whatever internal
// representation the store's time values have.

func normKey(k rekey.Key) rekey.Key {
	k.ExpiresAt = rekey.NormalizeTime(k.ExpiresAt)
	k.CreatedAt = rekey.NormalizeTime(k.CreatedAt)
	k.UpdatedAt = rekey.NormalizeTime(k.UpdatedAt)
	return k
}

func normVersion(v rekey.KeyVersion) rekey.KeyVersion {
	v.CreatedAt = rekey.NormalizeTime(v.CreatedAt)
	v.ActivatedAt = rekey.NormalizeTime(v.ActivatedAt)
	v.ExpiresAt = rekey.NormalizeTime(v.ExpiresAt)
	v.RetireAfter = rekey.NormalizeTime(v.RetireAfter)
	v.RetiredAt = rekey.NormalizeTime(v.RetiredAt)
	v.DestroyedAt = rekey.NormalizeTime(v.DestroyedAt)
	return v
}

func normDEK(d rekey.DEK) rekey.DEK {
	d.CreatedAt = rekey.NormalizeTime(d.CreatedAt)
	d.UpdatedAt = rekey.NormalizeTime(d.UpdatedAt)
	return d
}

func normDEKs(ds []rekey.DEK) []rekey.DEK {
	out := make([]rekey.DEK, len(ds))
	for i, d := range ds {
		out[i] = normDEK(d)
	}
	return out
}

func normRotation(r rekey.Rotation) rekey.Rotation {
	r.StartedAt = rekey.NormalizeTime(r.StartedAt)
	r.UpdatedAt = rekey.NormalizeTime(r.UpdatedAt)
	r.FinishedAt = rekey.NormalizeTime(r.FinishedAt)
	if len(r.FailedDEKs) == 0 {
		r.FailedDEKs = nil
	}
	return r
}

func normEvent(e rekey.AuditEvent) rekey.AuditEvent {
	e.Time = rekey.NormalizeTime(e.Time)
	return e
}

func normLease(l rekey.Lease) rekey.Lease {
	l.ExpiresAt = rekey.NormalizeTime(l.ExpiresAt)
	return l
}

// ids returns the ids of deks, in order.
func ids(deks []rekey.DEK) []string {
	out := make([]string, len(deks))
	for i, d := range deks {
		out[i] = d.ID
	}
	return out
}

// sortedIDs returns the ids of deks, ascending.
func sortedIDs(deks []rekey.DEK) []string {
	out := ids(deks)
	slices.Sort(out)
	return out
}

// event returns an unsaved audit event of type typ for key.
func event(typ rekey.AuditType, key string, at time.Time) rekey.AuditEvent {
	return rekey.AuditEvent{Time: at, Type: typ, Key: key, Actor: "storetest", Status: "ok"}
}

// checkChain fails unless evs is an unbroken chain starting at seq 1.
func checkChain(t *testing.T, evs []rekey.AuditEvent) {
	t.Helper()
	prev := rekey.GenesisHash
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d, want %d (a gap or a reorder)", i, e.Seq, i+1)
		}
		if e.PrevHash != prev {
			t.Fatalf("event seq %d: prev_hash %s, want %s", e.Seq, e.PrevHash, prev)
		}
		if h := e.ComputeHash(); e.Hash != h {
			t.Fatalf("event seq %d: hash %s, want %s", e.Seq, e.Hash, h)
		}
		prev = e.Hash
	}
}

func testPing(t *testing.T, f *fixture) {
	if err := f.s.Ping(f.ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// describe is used in table names.
func describe(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// sameTime reports whether got, read from the store, is want as the store
// keeps it (rekey.NormalizeTime).
func sameTime(got, want time.Time) bool { return got.Equal(rekey.NormalizeTime(want)) }
