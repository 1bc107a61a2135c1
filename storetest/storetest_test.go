package storetest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/memstore"
	"github.com/rekeyhq/rekey/storetest"
)

// Mutants are stores with one deliberate bug each. The suite must catch
// every one of them in the named subtest: a suite that passes a broken store
// proves nothing.

type swapIgnoresOld struct{ *memstore.Store }

// SwapDEKs swaps whatever the row holds: no compare.
func (s swapIgnoresOld) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease) ([]string, error) {
	for i := range swaps {
		if d, err := s.GetDEK(ctx, swaps[i].ID); err == nil {
			swaps[i].OldWrapped = d.Wrapped
		}
	}
	return s.Store.SwapDEKs(ctx, swaps, fence)
}

type insertPartial struct{ *memstore.Store }

// InsertDEKs stores row by row: a failing row leaves the ones before it.
func (s insertPartial) InsertDEKs(ctx context.Context, deks []rekey.DEK) error {
	for _, d := range deks {
		if err := s.Store.InsertDEKs(ctx, []rekey.DEK{d}); err != nil {
			return err
		}
	}
	return nil
}

type listIgnoresAfter struct{ *memstore.Store }

func (s listIgnoresAfter) ListDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	q.After = ""
	return s.Store.ListDEKs(ctx, q)
}

type briefDropsWrapped struct{ *memstore.Store }

// ListDEKs with Brief leaves the wrapped bytes out too.
func (s briefDropsWrapped) ListDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	ds, err := s.Store.ListDEKs(ctx, q)
	if q.Brief {
		for i := range ds {
			ds[i].Wrapped = nil
		}
	}
	return ds, err
}

type swapTrustsOldVersion struct{ *memstore.Store }

// SwapDEKs takes OldVersion for part of the compare-and-swap: a swap whose
// hint is not the row's version loses.
func (s swapTrustsOldVersion) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease) ([]string, error) {
	var keep []rekey.DEKSwap
	var lost []string
	for _, sw := range swaps {
		if d, err := s.GetDEK(ctx, sw.ID); err == nil && sw.OldVersion > 0 && d.Version != sw.OldVersion {
			lost = append(lost, sw.ID)
			continue
		}
		keep = append(keep, sw)
	}
	l, err := s.Store.SwapDEKs(ctx, keep, fence)
	return append(lost, l...), err
}

type countSkipsVersion2 struct{ *memstore.Store }

func (s countSkipsVersion2) CountDEKs(ctx context.Context, key string) (map[int]int64, error) {
	m, err := s.Store.CountDEKs(ctx, key)
	delete(m, 2)
	return m, err
}

type ignoresRequireUnused struct{ *memstore.Store }

func (s ignoresRequireUnused) ChangeVersionState(ctx context.Context, c rekey.VersionChange, fence *rekey.Lease, events ...rekey.AuditEvent) error {
	c.RequireUnused = false
	return s.Store.ChangeVersionState(ctx, c, fence, events...)
}

type auditDropsFirst struct{ *memstore.Store }

func (s auditDropsFirst) ListAudit(ctx context.Context, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	evs, err := s.Store.ListAudit(ctx, q)
	if len(evs) > 0 && evs[0].Seq == 1 {
		evs = evs[1:]
	}
	return evs, err
}

type leaseNeverHeld struct{ *memstore.Store }

// AcquireLease takes over whatever the time: a held lease is ignored.
func (s leaseNeverHeld) AcquireLease(ctx context.Context, key, owner string, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	return s.Store.AcquireLease(ctx, key, owner, ttl, now.Add(1000*time.Hour))
}

type breakAnyHolder struct{ *memstore.Store }

// BreakLease breaks whatever lease the key has: no compare.
func (s breakAnyHolder) BreakLease(ctx context.Context, l rekey.Lease, now time.Time) error {
	if cur, err := s.GetLease(ctx, l.Key); err == nil {
		l = cur
	}
	return s.Store.BreakLease(ctx, l, now)
}

type rotationsOldestFirst struct{ *memstore.Store }

func (s rotationsOldestFirst) ListRotations(ctx context.Context, q rekey.RotationQuery) ([]rekey.Rotation, error) {
	rs, err := s.Store.ListRotations(ctx, q)
	slices.Reverse(rs)
	return rs, err
}

type lastCheckpointIsFirst struct{ *memstore.Store }

func (s lastCheckpointIsFirst) LastAuditCheckpoint(ctx context.Context) (rekey.AuditCheckpoint, error) {
	cps, err := s.ListAuditCheckpoints(ctx, 0, 1)
	if err != nil || len(cps) == 0 {
		return s.Store.LastAuditCheckpoint(ctx)
	}
	return cps[0], nil
}

type checkpointDuplicateIgnored struct{ *memstore.Store }

// AppendAuditCheckpoint reports success for a seq already checkpointed.
func (s checkpointDuplicateIgnored) AppendAuditCheckpoint(ctx context.Context, cp rekey.AuditCheckpoint) error {
	if err := s.Store.AppendAuditCheckpoint(ctx, cp); err != nil && !errors.Is(err, rekey.ErrConflict) {
		return err
	}
	return nil
}

type batchNoCheckpoint struct{ *memstore.Store }

// CommitBatch writes the swaps and drops the checkpoint.
func (s batchNoCheckpoint) CommitBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, checkpoint rekey.RotationUpdate) ([]string, error) {
	return s.SwapDEKs(ctx, swaps, fence)
}

type batchNoDone struct{ *memstore.Store }

// CommitBatch writes the swaps, then the checkpoint as given: the swaps
// applied are not counted.
func (s batchNoDone) CommitBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, checkpoint rekey.RotationUpdate) ([]string, error) {
	lost, err := s.SwapDEKs(ctx, swaps, fence)
	if err != nil {
		return nil, err
	}
	return lost, s.AdvanceRotation(ctx, checkpoint, fence)
}

type batchTwoTransactions struct{ *memstore.Store }

// CommitBatch counts right but writes the swaps and the checkpoint one
// after the other: a stale checkpoint leaves the swaps written.
func (s batchTwoTransactions) CommitBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, checkpoint rekey.RotationUpdate) ([]string, error) {
	lost, err := s.SwapDEKs(ctx, swaps, fence)
	if err != nil {
		return nil, err
	}
	applied := int64(len(swaps) - len(lost))
	checkpoint.Rotation.Done += applied
	checkpoint.Events = slices.Clone(checkpoint.Events)
	for i := range checkpoint.Events {
		checkpoint.Events[i].DEKs += applied
	}
	return lost, s.AdvanceRotation(ctx, checkpoint, fence)
}

type versionExpiryIsKeys struct{ *memstore.Store }

// ListVersions reports the key's expiry as every version's: no expiry of
// its own per version.
func (s versionExpiryIsKeys) ListVersions(ctx context.Context, key string) ([]rekey.KeyVersion, error) {
	vs, err := s.Store.ListVersions(ctx, key)
	if err != nil {
		return nil, err
	}
	k, err := s.GetKey(ctx, key)
	for i := range vs {
		vs[i].ExpiresAt = k.ExpiresAt
	}
	return vs, err
}

var mutants = map[string]struct {
	store   func() rekey.Store
	catches string // the subtest that must fail
}{
	"swap-ignores-old":             {func() rekey.Store { return swapIgnoresOld{memstore.New()} }, "Swap/CompareAndSwap"},
	"swap-ignores-old-race":        {func() rekey.Store { return swapIgnoresOld{memstore.New()} }, "Concurrency/InsertSwapAudit"},
	"insert-partial":               {func() rekey.Store { return insertPartial{memstore.New()} }, "DEKs/InsertErrors"},
	"list-ignores-after":           {func() rekey.Store { return listIgnoresAfter{memstore.New()} }, "DEKs/ListPaging"},
	"list-ignores-after-pbt":       {func() rekey.Store { return listIgnoresAfter{memstore.New()} }, "Property/DEKModel"},
	"swap-trusts-old-version":      {func() rekey.Store { return swapTrustsOldVersion{memstore.New()} }, "DEKs/CountsAgree"},
	"count-skips-version-2":        {func() rekey.Store { return countSkipsVersion2{memstore.New()} }, "DEKs/Count"},
	"brief-drops-wrapped":          {func() rekey.Store { return briefDropsWrapped{memstore.New()} }, "DEKs/List"},
	"ignores-require-unused":       {func() rekey.Store { return ignoresRequireUnused{memstore.New()} }, "Versions/RequireUnused"},
	"audit-drops-first":            {func() rekey.Store { return auditDropsFirst{memstore.New()} }, "Audit/Chain"},
	"lease-never-held":             {func() rekey.Store { return leaseNeverHeld{memstore.New()} }, "Leases/Lifecycle"},
	"break-any-holder":             {func() rekey.Store { return breakAnyHolder{memstore.New()} }, "Leases/Break"},
	"rotations-oldest-first":       {func() rekey.Store { return rotationsOldestFirst{memstore.New()} }, "Rotations/Query"},
	"last-checkpoint-is-first":     {func() rekey.Store { return lastCheckpointIsFirst{memstore.New()} }, "Audit/Checkpoints/RoundTrip"},
	"checkpoint-duplicate-ignored": {func() rekey.Store { return checkpointDuplicateIgnored{memstore.New()} }, "Audit/Checkpoints/Errors"},
	"batch-no-checkpoint":          {func() rekey.Store { return batchNoCheckpoint{memstore.New()} }, "Batch/Commit"},
	"batch-no-done":                {func() rekey.Store { return batchNoDone{memstore.New()} }, "Batch/Commit"},
	"batch-two-transactions":       {func() rekey.Store { return batchTwoTransactions{memstore.New()} }, "Batch/Stale"},
	"version-expiry-is-keys":       {func() rekey.Store { return versionExpiryIsKeys{memstore.New()} }, "Versions/ExpiresAt"},
}

// TestMutant runs the suite against the mutant named by STORETEST_MUTANT;
// without it, it is skipped. TestSuiteCatchesMutants runs it in a child
// process and expects it to fail.
func TestMutant(t *testing.T) {
	name := os.Getenv("STORETEST_MUTANT")
	if name == "" {
		t.Skip("run by TestSuiteCatchesMutants")
	}
	storetest.Run(t, func(t *testing.T) rekey.Store { return mutants[name].store() })
}

func TestSuiteCatchesMutants(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	for name, m := range mutants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pattern := "^TestMutant$/^" + strings.ReplaceAll(m.catches, "/", "$/^") + "$"
			// No rapid fail files in testdata for failures that are expected,
			// and little time spent shrinking them.
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run", pattern, "-test.v", "-test.count=1",
				"-rapid.nofailfile", "-rapid.shrinktime=2s")
			cmd.Env = append(os.Environ(), "STORETEST_MUTANT="+name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed the mutant %q; %s should have failed:\n%s", name, m.catches, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestMutant/"+m.catches) {
				t.Errorf("mutant %q: %s did not fail:\n%s", name, m.catches, out)
			}
		})
	}
}

// TestSuitePassesMemstore is the control: the store the mutants wrap
// passes.
func TestSuitePassesMemstore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) rekey.Store { return memstore.New() })
}
