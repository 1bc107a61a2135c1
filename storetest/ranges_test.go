package storetest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/sqlitestore"
	"github.com/rekeyhq/rekey/storetest"
)

// Range mutants: stores with one deliberate bug each in rekey.RangeSharer,
// which the range cases must catch. They wrap sqlitestore (a real store,
// in a temp file), the first store of this module to implement
// RangeSharer.

// openSQLite opens a sqlitestore in t's temp dir.
func openSQLite(t *testing.T) *sqlitestore.Store {
	t.Helper()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Create: true, Path: filepath.Join(t.TempDir(), "rekey.db")})
	if err != nil {
		t.Fatalf("sqlitestore.Open: %v", err)
	}
	return s
}

type splitTwiceOK struct{ *sqlitestore.Store }

// SplitRewrap reports success for a rotation split already.
func (s splitTwiceOK) SplitRewrap(ctx context.Context, id string, bounds []string, fence rekey.Lease, events ...rekey.AuditEvent) error {
	if err := s.Store.SplitRewrap(ctx, id, bounds, fence, events...); err != nil && !errors.Is(err, rekey.ErrConflict) {
		return err
	}
	return nil
}

type boundsOffByOne struct{ *sqlitestore.Store }

// DEKBounds counts every+1 DEKs per range.
func (s boundsOffByOne) DEKBounds(ctx context.Context, key string, notVersion, every int) ([]string, error) {
	return s.Store.DEKBounds(ctx, key, notVersion, every+1)
}

type rangesReversed struct{ *sqlitestore.Store }

func (s rangesReversed) ListRewrapRanges(ctx context.Context, id string) ([]rekey.RewrapRange, error) {
	rs, err := s.Store.ListRewrapRanges(ctx, id)
	slices.Reverse(rs)
	return rs, err
}

type rangeCommitUnfenced struct{ *sqlitestore.Store }

// CommitRangeBatch, fenced, commits under whatever lease the range has
// now: a holder that lost its range keeps writing.
func (s rangeCommitUnfenced) CommitRangeBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, cp rekey.RangeCheckpoint) ([]string, error) {
	lost, err := s.Store.CommitRangeBatch(ctx, swaps, fence, cp)
	if errors.Is(err, rekey.ErrFenced) {
		if cur, gerr := s.GetLease(ctx, rekey.RangeLeaseKey(cp.RotationID, cp.Index)); gerr == nil {
			return s.Store.CommitRangeBatch(ctx, swaps, cur, cp)
		}
	}
	return lost, err
}

var rangeMutants = map[string]struct {
	store   func(t *testing.T) rekey.Store
	catches string // the subtest that must fail
}{
	"split-twice-ok":        {func(t *testing.T) rekey.Store { return splitTwiceOK{openSQLite(t)} }, "Ranges/SplitRefused"},
	"bounds-off-by-one":     {func(t *testing.T) rekey.Store { return boundsOffByOne{openSQLite(t)} }, "Ranges/DEKBounds"},
	"ranges-reversed":       {func(t *testing.T) rekey.Store { return rangesReversed{openSQLite(t)} }, "Ranges/Split"},
	"range-commit-unfenced": {func(t *testing.T) rekey.Store { return rangeCommitUnfenced{openSQLite(t)} }, "Ranges/CommitFenced"},
}

// TestRangeMutant runs the suite against the range mutant named by
// STORETEST_RANGE_MUTANT; without it, it is skipped.
// TestSuiteCatchesRangeMutants runs it in a child process and expects it
// to fail.
func TestRangeMutant(t *testing.T) {
	name := os.Getenv("STORETEST_RANGE_MUTANT")
	if name == "" {
		t.Skip("run by TestSuiteCatchesRangeMutants")
	}
	storetest.Run(t, rangeMutants[name].store)
}

func TestSuiteCatchesRangeMutants(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	for name, m := range rangeMutants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pattern := "^TestRangeMutant$/^" + strings.ReplaceAll(m.catches, "/", "$/^") + "$"
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run", pattern, "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "STORETEST_RANGE_MUTANT="+name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed the range mutant %q; %s should have failed:\n%s", name, m.catches, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestRangeMutant/"+m.catches) {
				t.Errorf("range mutant %q: %s did not fail:\n%s", name, m.catches, out)
			}
		})
	}
}

// TestSuitePassesSQLite is the control of the range mutants: the store
// they wrap passes the range cases.
func TestSuitePassesSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) rekey.Store { return openSQLite(t) })
}
