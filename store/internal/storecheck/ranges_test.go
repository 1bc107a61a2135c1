package storecheck

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/rekeyhq/rekey"
)

func TestValidateBounds(t *testing.T) {
	tests := []struct {
		bounds []string
		ok     bool
	}{
		{nil, true},
		{[]string{"a"}, true},
		{[]string{"a", "b", "c"}, true},
		{[]string{"b", "a"}, false},
		{[]string{"a", "a"}, false},
		{[]string{""}, false},
		{[]string{"a", ""}, false},
	}
	for _, tc := range tests {
		err := ValidateBounds("r1", tc.bounds)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, rekey.ErrInvalidArgument)) {
			t.Errorf("ValidateBounds(%q) = %v; want ok %v", tc.bounds, err, tc.ok)
		}
	}
}

func TestRangeBoundsAndInRange(t *testing.T) {
	lo, hi := RangeBounds([]string{"d", "m"})
	if !slices.Equal(lo, []string{"", "d", "m"}) || !slices.Equal(hi, []string{"d", "m", ""}) {
		t.Fatalf("RangeBounds = %q, %q", lo, hi)
	}
	// Every id is in exactly one range; a bound is in the range it ends.
	for _, id := range []string{"a", "d", "e", "m", "n", "zzz"} {
		var in []int
		for i := range lo {
			if InRange(id, lo[i], hi[i]) {
				in = append(in, i)
			}
		}
		if len(in) != 1 {
			t.Errorf("id %q is in ranges %v, want exactly one", id, in)
		}
	}
	if !InRange("d", "", "d") || InRange("d", "d", "m") {
		t.Errorf("a bound belongs to the range below it")
	}
}

func TestAppendFailed(t *testing.T) {
	cur := []string{"x", "y"}
	if got := AppendFailed(cur, []string{"z"}); !slices.Equal(got, []string{"x", "y", "z"}) {
		t.Errorf("AppendFailed = %q", got)
	}
	if !slices.Equal(cur, []string{"x", "y"}) {
		t.Errorf("AppendFailed changed its argument: %q", cur)
	}
	many := make([]string, 150)
	for i := range many {
		many[i] = fmt.Sprint(i)
	}
	got := AppendFailed(cur, many)
	if len(got) != MaxFailedDEKs || got[2] != "0" || got[MaxFailedDEKs-1] != "97" {
		t.Errorf("AppendFailed(150 more) kept %d, last %q", len(got), got[len(got)-1])
	}
	if got := AppendFailed(got, []string{"late"}); len(got) != MaxFailedDEKs {
		t.Errorf("AppendFailed on a full list grew it to %d", len(got))
	}
}

func TestAddEventDEKs(t *testing.T) {
	evs := []rekey.AuditEvent{{DEKs: 0}, {DEKs: 10}}
	got := AddEventDEKs(evs, 3)
	if got[0].DEKs != 3 || got[1].DEKs != 13 || evs[0].DEKs != 0 || evs[1].DEKs != 10 {
		t.Errorf("AddEventDEKs = %d, %d; caller's now %d, %d", got[0].DEKs, got[1].DEKs, evs[0].DEKs, evs[1].DEKs)
	}
}
