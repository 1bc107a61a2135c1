package storetest

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey"
)

// realCounts counts the DEKs of key per version by listing every row.
func (f *fixture) realCounts(t *testing.T, key string) map[int]int64 {
	t.Helper()
	out := map[int]int64{}
	after := ""
	for {
		page, err := f.s.ListDEKs(f.ctx, rekey.DEKQuery{Key: key, After: after, Limit: 1000})
		if err != nil {
			t.Fatalf("ListDEKs(%s): %v", key, err)
		}
		for _, d := range page {
			out[d.Version]++
		}
		if len(page) < 1000 {
			return out
		}
		after = page[len(page)-1].ID
	}
}

// countsAgree fails unless CountDEKs of each key equals the rows listed.
func (f *fixture) countsAgree(t *testing.T, when string, keys ...string) {
	t.Helper()
	rc, _ := f.s.(rekey.DEKRowCounter)
	for _, key := range keys {
		real, counted := f.realCounts(t, key), f.count(t, key)
		equal(t, fmt.Sprintf("CountDEKs(%s) %s (against the rows listed)", key, when), counted, real)
		if rc == nil {
			continue
		}
		versions := maps.Clone(real)
		maps.Copy(versions, counted)
		for v := range versions {
			n, err := rc.CountDEKRows(f.ctx, key, v)
			if err != nil {
				t.Fatalf("CountDEKRows(%s, %d) %s: %v", key, v, when, err)
			}
			equal(t, fmt.Sprintf("CountDEKRows(%s, %d) %s (against the rows listed)", key, v, when), n, real[v])
		}
	}
}

// testCountsAgree checks CountDEKs against the rows after every kind of
// write that moves them: inserts, swaps that win and lose, swaps of rows
// on different versions in one batch, a DEK swapped twice in one batch,
// batches and range batches, and writes refused as a whole.
func testCountsAgree(t *testing.T, f *fixture) {
	l, r, deks := batchFixture(t, f, 16) // key a: 16 DEKs on 1, version 2 created
	f.createKey(t, "b")
	foreign := f.insertDEKs(t, "b", 1, 4)[0]
	f.countsAgree(t, "after inserts", "a", "b")

	// Winners, a stale swap, a missing DEK, a DEK of another key, and the
	// same swap twice (the second loses).
	stale := swapOf(deks[3])
	stale.OldWrapped = randomBytes(48)
	missing := rekey.DEKSwap{ID: rekey.NewID(), OldWrapped: []byte("x"), NewWrapped: []byte("y"), NewVersion: 2}
	ofOtherKey := rekey.DEKSwap{ID: foreign.ID, OldWrapped: foreign.Wrapped, NewWrapped: []byte("y"), NewVersion: 1}
	twice := swapOf(deks[2])
	batch := []rekey.DEKSwap{swapOf(deks[0]), stale, swapOf(deks[1]), missing, ofOtherKey, twice, twice}
	lost, err := f.s.SwapDEKs(f.ctx, batch, l)
	if err != nil || len(lost) != 4 {
		t.Fatalf("SwapDEKs = %v, %v; want 4 lost", lost, err)
	}
	f.countsAgree(t, "after swaps that won and lost", "a", "b")
	equal(t, "CountDEKs(a) after 3 of 16 swapped", f.count(t, "a"), map[int]int64{1: 13, 2: 3})

	// One batch moving rows both ways (2 → 1, 1 → 2, 2 → 1), and a DEK
	// moved twice (1 → 2 → 1).
	cur := f.reread(t, deks[:6])
	back := func(d rekey.DEK) rekey.DEKSwap {
		return rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: randomBytes(40), NewVersion: 1}
	}
	first := swapOf(cur[5])
	second := rekey.DEKSwap{ID: cur[5].ID, OldWrapped: first.NewWrapped, NewWrapped: randomBytes(40), NewVersion: 1}
	mixed := []rekey.DEKSwap{back(cur[0]), swapOf(cur[4]), back(cur[1]), first, second}
	if lost, err := f.s.SwapDEKs(f.ctx, mixed, l); err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs(both ways) = %v, %v", lost, err)
	}
	f.countsAgree(t, "after a batch moving rows both ways", "a", "b")
	equal(t, "CountDEKs(a) after moving both ways", f.count(t, "a"), map[int]int64{1: 14, 2: 2})

	// OldVersion is a hint that never decides a swap: wrong ones (a row on
	// 1 said to be on 2, a row on 2 said to be on 1, a version the key
	// lacks) and a missing one, beside a right one, all apply, and each
	// row's counter moves from the version it was really on.
	cur = f.reread(t, deks[:6]) // 0, 1, 3, 5 on version 1; 2, 4 on 2
	hinted := func(d rekey.DEK, to, hint int) rekey.DEKSwap {
		return rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: randomBytes(40), NewVersion: to, OldVersion: hint}
	}
	hints := []rekey.DEKSwap{hinted(cur[0], 2, 2), hinted(cur[2], 1, 1), hinted(cur[3], 2, 7), hinted(cur[4], 1, 2), hinted(cur[5], 2, 0)}
	if lost, err := f.s.SwapDEKs(f.ctx, hints, l); err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs(wrong OldVersion hints) = %v, %v; want every swap applied", lost, err)
	}
	f.countsAgree(t, "after swaps with wrong OldVersion hints", "a")
	equal(t, "CountDEKs(a) after swaps with wrong hints", f.count(t, "a"), map[int]int64{1: 13, 2: 3})

	// A batch with its checkpoint.
	cur = f.reread(t, deks)
	if lost, err := f.s.CommitBatch(f.ctx, []rekey.DEKSwap{swapOf(cur[6]), swapOf(cur[7])}, l, f.batchCheckpoint(r, cur[7].ID)); err != nil || len(lost) != 0 {
		t.Fatalf("CommitBatch = %v, %v", lost, err)
	}
	f.countsAgree(t, "after CommitBatch", "a")

	// Refused as a whole: nothing moves.
	before := f.count(t, "a")
	cur = f.reread(t, deks)
	stale2 := f.batchCheckpoint(r, "")
	stale2.FromState = rekey.RotationClaimed
	if _, err := f.s.CommitBatch(f.ctx, []rekey.DEKSwap{swapOf(cur[8])}, l, stale2); err == nil {
		t.Fatal("CommitBatch from a state the rotation left: no error")
	}
	toMissing := swapOf(cur[9])
	toMissing.NewVersion = 9
	if _, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{swapOf(cur[10]), toMissing}, l); !errors.Is(err, rekey.ErrVersionNotFound) {
		t.Fatalf("SwapDEKs to a version the key lacks: %v, want ErrVersionNotFound", err)
	}
	dup := f.newDEK("a", 1)
	if err := f.s.InsertDEKs(f.ctx, []rekey.DEK{f.newDEK("a", 1), dup, dup}); !errors.Is(err, rekey.ErrConflict) {
		t.Fatalf("InsertDEKs with a duplicate id: %v, want ErrConflict", err)
	}
	if err := f.s.InsertDEKs(f.ctx, []rekey.DEK{f.newDEK("a", 1), f.newDEK("a", 2)}); !errors.Is(err, rekey.ErrVersionNotActive) {
		t.Fatalf("InsertDEKs on a version not active: %v, want ErrVersionNotActive", err)
	}
	f.countsAgree(t, "after refused writes", "a", "b")
	equal(t, "CountDEKs(a) after refused writes", f.count(t, "a"), before)

	// A range batch.
	rs := f.sharer(t)
	f.split(t, rs, r, l)
	l0 := f.rangeLease(t, r, 0, "w2", 0)
	cur = f.reread(t, deks)
	if lost, err := rs.CommitRangeBatch(f.ctx, []rekey.DEKSwap{swapOf(cur[11]), swapOf(cur[12]), ofOtherKey}, l0, f.rangeCheckpoint(r, 0, cur[12].ID)); err != nil || len(lost) != 1 {
		t.Fatalf("CommitRangeBatch = %v, %v; want 1 lost", lost, err)
	}
	f.countsAgree(t, "after CommitRangeBatch", "a", "b")
}

// testCountsConcurrent has writers insert DEKs and move them between
// versions, and race for the same DEKs, all at once; the counts must then
// agree with the rows.
func testCountsConcurrent(t *testing.T, f *fixture) {
	const (
		workers = 6
		rounds  = 8
		batch   = 10
	)
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	f.addVersion(t, "a", 1, 2, l)
	shared := f.insertDEKs(t, "a", 1, 20)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				deks := make([]rekey.DEK, batch)
				for i := range deks {
					deks[i] = f.newDEK("a", 1)
				}
				if err := f.s.InsertDEKs(f.ctx, deks); err != nil {
					t.Errorf("worker %d: InsertDEKs: %v", w, err)
					return
				}
				// Half of this batch to version 2, and a race with the
				// others for the shared DEKs, both ways.
				var swaps []rekey.DEKSwap
				for _, d := range deks[:batch/2] {
					swaps = append(swaps, swapOf(d))
				}
				for _, d := range shared {
					cur, err := f.s.GetDEK(f.ctx, d.ID)
					if err != nil {
						t.Errorf("worker %d: GetDEK: %v", w, err)
						return
					}
					swaps = append(swaps, rekey.DEKSwap{ID: cur.ID, OldWrapped: cur.Wrapped, NewWrapped: randomBytes(40), NewVersion: 1 + (w+r)%2})
				}
				if _, err := f.s.SwapDEKs(f.ctx, swaps, l); err != nil {
					t.Errorf("worker %d: SwapDEKs: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	f.countsAgree(t, "after concurrent writers", "a")
	var total int64
	for _, n := range f.count(t, "a") {
		total += n
	}
	equal(t, "DEKs of a", total, int64(20+workers*rounds*batch))
}

// RunCountGate checks, for a store whose CountDEKs reads counters it keeps
// beside the rows, that retiring a version still counts the rows
// themselves: setCount sets the store's counter of key's DEKs on version
// to n behind the store's back (an UPDATE in SQL), and ChangeVersionState
// with RequireUnused must still refuse while a row uses the version. A
// store that counts the rows for CountDEKs has no counter to set: it does
// not call this.
func RunCountGate(t *testing.T, newStore func(t *testing.T) rekey.Store, setCount func(t *testing.T, s rekey.Store, key string, version int, n int64)) {
	t.Helper()
	f := setup(t, newStore)
	l, deks := retiredFixture(t, f, 2) // a: 1 pending retirement with 2 DEKs, 2 active
	if lost, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{swapOf(deks[0])}, l); err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs = %v, %v", lost, err)
	}
	setCount(t, f.s, "a", 1, 0)
	if n := f.count(t, "a")[1]; n != 0 {
		t.Fatalf("CountDEKs(a)[1] = %d after setCount(a, 1, 0): setCount does not reach the counter CountDEKs reads", n)
	}
	// The engine counts the rows before it retires a version at the
	// backend: CountDEKRows must not read the counter.
	rc, ok := f.s.(rekey.DEKRowCounter)
	if !ok {
		t.Fatalf("%T keeps counters but is not a rekey.DEKRowCounter: the engine would retire versions at the backend on a counter", f.s)
	}
	if n, err := rc.CountDEKRows(f.ctx, "a", 1); err != nil || n != 1 {
		t.Fatalf("CountDEKRows(a, 1) = %d, %v after setCount(a, 1, 0); want the 1 row", n, err)
	}
	n := f.auditLen(t)
	err := f.s.ChangeVersionState(f.ctx, retire(f, true), &l, event(rekey.AuditVersionRetired, "a", f.t0))
	var inUse *rekey.VersionInUseError
	if !errors.As(err, &inUse) || inUse.DEKs != 1 {
		t.Fatalf("retire a version its counter says is unused while a row uses it: %v, want *VersionInUseError with 1 DEK", err)
	}
	if v := f.versions(t, "a")[1]; v.State != rekey.VersionPendingRetirement {
		t.Errorf("refused retirement changed the state to %s", v.State)
	}
	if m := f.auditLen(t); m != n {
		t.Errorf("refused retirement appended %d events", m-n)
	}
	// The other way: a counter saying the version is used does not stop
	// a retirement once no row uses it.
	if lost, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{swapOf(deks[1])}, l); err != nil || len(lost) != 0 {
		t.Fatalf("SwapDEKs = %v, %v", lost, err)
	}
	setCount(t, f.s, "a", 1, 5)
	if err := f.s.ChangeVersionState(f.ctx, retire(f, true), &l); err != nil {
		t.Fatalf("retire a version no row uses (its counter says 5): %v", err)
	}
}
