package storetest

import (
	"cmp"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

func testDEKsInsertGet(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	deks := make([]rekey.DEK, 5)
	for i := range deks {
		deks[i] = f.newDEK("a", 1)
		deks[i].CreatedAt = f.at(time.Duration(i) * time.Second)
		deks[i].UpdatedAt = f.at(time.Duration(i) * time.Minute)
	}
	deks[2].Label = "" // labels are optional
	if err := f.s.InsertDEKs(f.ctx, deks); err != nil {
		t.Fatalf("InsertDEKs: %v", err)
	}
	for _, d := range deks {
		equal(t, "GetDEK("+d.ID+")", normDEK(f.getDEK(t, d.ID)), normDEK(d))
	}
	_, err := f.s.GetDEK(f.ctx, rekey.NewID())
	wantErr(t, "GetDEK unknown", err, rekey.ErrDEKNotFound)
	if err := f.s.InsertDEKs(f.ctx, nil); err != nil {
		t.Errorf("InsertDEKs(nil): %v", err)
	}
}

func testDEKsInsertErrors(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	f.addVersion(t, "a", 1, 2, l) // version 2 exists, not active
	existing := f.insertDEKs(t, "a", 1, 3)

	dup := f.newDEK("a", 1)
	tests := []struct {
		name  string
		batch []rekey.DEK
		want  error
	}{
		{"existing id", []rekey.DEK{f.newDEK("a", 1), {ID: existing[1].ID, Key: "a", Version: 1, Wrapped: []byte("x")}, f.newDEK("a", 1)}, rekey.ErrConflict},
		{"id twice in batch", []rekey.DEK{dup, f.newDEK("a", 1), dup}, rekey.ErrConflict},
		{"unknown key", []rekey.DEK{f.newDEK("a", 1), f.newDEK("nope", 1)}, rekey.ErrKeyNotFound},
		{"created version", []rekey.DEK{f.newDEK("a", 1), f.newDEK("a", 2)}, rekey.ErrVersionNotActive},
		{"unknown version", []rekey.DEK{f.newDEK("a", 7)}, rekey.ErrVersionNotActive},
		{"no id", []rekey.DEK{{Key: "a", Version: 1, Wrapped: []byte("x")}}, rekey.ErrInvalidArgument},
		{"no wrapped bytes", []rekey.DEK{{ID: rekey.NewID(), Key: "a", Version: 1}}, rekey.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "InsertDEKs", f.s.InsertDEKs(f.ctx, tc.batch), tc.want)
			equal(t, "CountDEKs after a failed batch", f.count(t, "a"), map[int]int64{1: 3})
			for _, d := range tc.batch {
				if slices.Contains(ids(existing), d.ID) {
					continue
				}
				if _, err := f.s.GetDEK(f.ctx, d.ID); err == nil {
					t.Errorf("dek %s of a failed batch was stored", d.ID)
				}
			}
		})
	}
	// The existing DEK was not overwritten.
	equal(t, "existing dek", normDEK(f.getDEK(t, existing[1].ID)), normDEK(existing[1]))

	// Nothing new is wrapped under a compromised active version: an
	// emergency rotation is replacing it.
	if err := f.s.ChangeVersionState(f.ctx, rekey.VersionChange{Key: "a", Version: 1, From: []rekey.VersionState{rekey.VersionActive},
		To: rekey.VersionCompromised, At: f.at(time.Minute)}, &l); err != nil {
		t.Fatalf("mark version 1 compromised: %v", err)
	}
	wantErr(t, "InsertDEKs under a compromised active version", f.s.InsertDEKs(f.ctx, []rekey.DEK{f.newDEK("a", 1)}), rekey.ErrVersionDisabled)
	equal(t, "CountDEKs after the refused batch", f.count(t, "a"), map[int]int64{1: 3})
}

// listFixture stores DEKs of key "a" on versions 1 and 2 (2 active at the
// end) and of key "b", inserted in shuffled order, and returns those of "a".
func listFixture(t *testing.T, f *fixture) (onV1, onV2 []rekey.DEK) {
	t.Helper()
	f.createKey(t, "a")
	f.createKey(t, "b")
	onV1 = make([]rekey.DEK, 7)
	for i := range onV1 {
		onV1[i] = f.newDEK("a", 1)
	}
	shuffled := slices.Clone(onV1)
	slices.Reverse(shuffled)
	shuffled[1], shuffled[4] = shuffled[4], shuffled[1]
	if err := f.s.InsertDEKs(f.ctx, shuffled); err != nil {
		t.Fatalf("InsertDEKs: %v", err)
	}
	f.insertDEKs(t, "b", 1, 4)
	l := f.lease(t, "a", "w1")
	f.commitVersion(t, "a", 1, 2, l)
	onV2 = f.insertDEKs(t, "a", 2, 5)
	return onV1, onV2
}

func testDEKsList(t *testing.T, f *fixture) {
	onV1, onV2 := listFixture(t, f)
	all := append(slices.Clone(onV1), onV2...)
	slices.SortFunc(all, func(a, b rekey.DEK) int { return cmp.Compare(a.ID, b.ID) })
	sorted := func(ds []rekey.DEK) []rekey.DEK {
		out := slices.Clone(ds)
		slices.SortFunc(out, func(a, b rekey.DEK) int { return cmp.Compare(a.ID, b.ID) })
		return out
	}
	tests := []struct {
		name string
		q    rekey.DEKQuery
		want []rekey.DEK
	}{
		{"by key", rekey.DEKQuery{Key: "a"}, all},
		{"version 1", rekey.DEKQuery{Key: "a", Version: 1}, sorted(onV1)},
		{"version 2", rekey.DEKQuery{Key: "a", Version: 2}, sorted(onV2)},
		{"not version 2", rekey.DEKQuery{Key: "a", NotVersion: 2}, sorted(onV1)},
		{"not version 1", rekey.DEKQuery{Key: "a", NotVersion: 1}, sorted(onV2)},
		{"not version 9", rekey.DEKQuery{Key: "a", NotVersion: 9}, all},
		{"version 3", rekey.DEKQuery{Key: "a", Version: 3}, nil},
		{"limit", rekey.DEKQuery{Key: "a", Limit: 3}, all[:3]},
		{"after", rekey.DEKQuery{Key: "a", After: all[4].ID}, all[5:]},
		{"after and limit", rekey.DEKQuery{Key: "a", After: all[4].ID, Limit: 2}, all[5:7]},
		{"after the last", rekey.DEKQuery{Key: "a", After: all[len(all)-1].ID}, nil},
		{"after and version", rekey.DEKQuery{Key: "a", Version: 1, After: sorted(onV1)[2].ID}, sorted(onV1)[3:]},
		{"unknown key", rekey.DEKQuery{Key: "nope"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.s.ListDEKs(f.ctx, tc.q)
			if err != nil {
				t.Fatalf("ListDEKs(%+v): %v", tc.q, err)
			}
			equal(t, "ids", ids(got), ids(tc.want))
			if len(got) == len(tc.want) {
				equal(t, "deks", normDEKs(got), normDEKs(tc.want))
			}
			// Brief may leave the label and times out, nothing else.
			q := tc.q
			q.Brief = true
			got, err = f.s.ListDEKs(f.ctx, q)
			if err != nil {
				t.Fatalf("ListDEKs(%+v): %v", q, err)
			}
			equal(t, "ids, brief", ids(got), ids(tc.want))
			if len(got) == len(tc.want) {
				equal(t, "deks, brief", briefDEKs(got), briefDEKs(tc.want))
			}
		})
	}
	t.Run("no key", func(t *testing.T) {
		_, err := f.s.ListDEKs(f.ctx, rekey.DEKQuery{})
		wantErr(t, "ListDEKs without key", err, rekey.ErrInvalidArgument)
	})
}

func testDEKsListPaging(t *testing.T, f *fixture) {
	f.createKey(t, "a")
	var want []rekey.DEK
	for range 5 {
		want = append(want, f.insertDEKs(t, "a", 1, 23)...)
	}
	for _, q := range []rekey.DEKQuery{
		{Key: "a", Limit: 1},
		{Key: "a", Limit: 10},
		{Key: "a", Limit: 115},
		{Key: "a"}, // the default limit (1000) covers them all
		{Key: "a", Version: 1, Limit: 7},
		{Key: "a", NotVersion: 2, Limit: 50},
	} {
		t.Run(describe("limit %d version %d not %d", q.Limit, q.Version, q.NotVersion), func(t *testing.T) {
			var got []string
			seen := map[string]bool{}
			for page := 0; ; page++ {
				if page > len(want)+1 {
					t.Fatalf("paging does not end")
				}
				ds, err := f.s.ListDEKs(f.ctx, q)
				if err != nil {
					t.Fatalf("ListDEKs: %v", err)
				}
				if q.Limit > 0 && len(ds) > q.Limit {
					t.Fatalf("page of %d, over the limit %d", len(ds), q.Limit)
				}
				for _, d := range ds {
					if seen[d.ID] {
						t.Fatalf("dek %s listed twice", d.ID)
					}
					seen[d.ID] = true
					got = append(got, d.ID)
				}
				if len(ds) == 0 {
					break
				}
				q.After = ds[len(ds)-1].ID
			}
			equal(t, "all pages", got, sortedIDs(want))
		})
	}
}

func testDEKsCount(t *testing.T, f *fixture) {
	equal(t, "CountDEKs of an unknown key", len(f.count(t, "nope")), 0)
	f.createKey(t, "a")
	f.createKey(t, "b")
	equal(t, "CountDEKs of a key without DEKs", len(f.count(t, "a")), 0)
	f.insertDEKs(t, "a", 1, 6)
	f.insertDEKs(t, "b", 1, 2)
	l := f.lease(t, "a", "w1")
	f.commitVersion(t, "a", 1, 2, l)
	f.insertDEKs(t, "a", 2, 3)
	equal(t, "CountDEKs(a)", f.count(t, "a"), map[int]int64{1: 6, 2: 3})
	equal(t, "CountDEKs(b)", f.count(t, "b"), map[int]int64{1: 2})
	// Moving two DEKs to version 2 moves the counts.
	page, err := f.s.ListDEKs(f.ctx, rekey.DEKQuery{Key: "a", Version: 1, Limit: 2})
	if err != nil {
		t.Fatalf("ListDEKs: %v", err)
	}
	var swaps []rekey.DEKSwap
	for _, d := range page {
		swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: randomBytes(48), NewVersion: 2})
	}
	if lost, err := f.s.SwapDEKs(f.ctx, swaps, l); err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs = %v, %v", lost, err)
	}
	got := f.count(t, "a")
	equal(t, "CountDEKs(a) after swaps", got, map[int]int64{1: 4, 2: 5})
	if !slices.Equal(slices.Sorted(maps.Keys(got)), []int{1, 2}) {
		t.Errorf("CountDEKs has versions %v", slices.Sorted(maps.Keys(got)))
	}
}

// briefDEKs keeps what a ListDEKs with Brief must return of each DEK.
func briefDEKs(ds []rekey.DEK) []rekey.DEK {
	out := make([]rekey.DEK, len(ds))
	for i, d := range ds {
		out[i] = rekey.DEK{ID: d.ID, Key: d.Key, Version: d.Version, Wrapped: d.Wrapped}
	}
	return out
}
