package storetest

import (
	"bytes"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey"
)

// testConcurrency has many goroutines insert DEKs, race each other to swap
// the same DEKs and append audit events, all at once. Every contested DEK
// must have exactly one winner, whose value is the one stored; every insert
// and event must be there; the audit chain must be unbroken.
func testConcurrency(t *testing.T, f *fixture) {
	const (
		workers   = 8
		rounds    = 10
		batch     = 20
		contested = 40
	)
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	f.addVersion(t, "a", 1, 2, l)
	shared := f.insertDEKs(t, "a", 1, contested)
	eventsBefore := f.auditLen(t)

	won := make([][]string, workers) // ids each worker swapped successfully
	values := make([]map[string][]byte, workers)
	own := make([][]rekey.DEK, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		values[w] = map[string][]byte{}
		wg.Go(func() {
			<-start
			for r := range rounds {
				// Insert a batch of this worker's own.
				deks := make([]rekey.DEK, batch)
				for i := range deks {
					deks[i] = f.newDEK("a", 1)
				}
				if err := f.s.InsertDEKs(f.ctx, deks); err != nil {
					t.Errorf("worker %d: InsertDEKs: %v", w, err)
					return
				}
				own[w] = append(own[w], deks...)

				// Race for a slice of the shared DEKs.
				lo := (r * contested / rounds) % contested
				hi := lo + contested/rounds*2
				var swaps []rekey.DEKSwap
				for _, d := range shared[lo:min(hi, contested)] {
					v := []byte(fmt.Sprintf("worker-%d-%s", w, d.ID))
					values[w][d.ID] = v
					swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: v, NewVersion: 2})
				}
				// And move this worker's own batch to version 2: nobody
				// else touches it, so nothing may be lost.
				for _, d := range deks {
					swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: append([]byte("own-"), d.Wrapped...), NewVersion: 2})
				}
				lost, err := f.s.SwapDEKs(f.ctx, swaps, l)
				if err != nil {
					t.Errorf("worker %d: SwapDEKs: %v", w, err)
					return
				}
				lostSet := map[string]bool{}
				for _, id := range lost {
					lostSet[id] = true
				}
				for _, sw := range swaps {
					if lostSet[sw.ID] {
						continue
					}
					if _, isShared := values[w][sw.ID]; isShared {
						won[w] = append(won[w], sw.ID)
					}
				}
				for _, d := range deks {
					if lostSet[d.ID] {
						t.Errorf("worker %d: swap of its own dek %s lost", w, d.ID)
					}
				}

				ev := event(rekey.AuditRewrapProgress, "a", f.t0)
				ev.Actor = "worker-" + strconv.Itoa(w)
				ev.DEKs = int64(r)
				if err := f.s.AppendAudit(f.ctx, ev, ev); err != nil {
					t.Errorf("worker %d: AppendAudit: %v", w, err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}

	// Exactly one winner per contested DEK, and its value is stored.
	winner := map[string]int{}
	for w := range workers {
		for _, id := range won[w] {
			if prev, ok := winner[id]; ok {
				t.Errorf("dek %s: both worker %d and worker %d won the swap (a lost update)", id, prev, w)
			}
			winner[id] = w
		}
	}
	for _, d := range shared {
		got := f.getDEK(t, d.ID)
		w, ok := winner[d.ID]
		switch {
		case !ok:
			t.Errorf("dek %s: no worker won, yet every swap started from its stored value", d.ID)
		case !bytes.Equal(got.Wrapped, values[w][d.ID]) || got.Version != 2:
			t.Errorf("dek %s: stored value is not the winner's (worker %d)", d.ID, w)
		}
	}
	for w := range workers {
		for _, d := range own[w] {
			got := f.getDEK(t, d.ID)
			if got.Version != 2 || !bytes.Equal(got.Wrapped, append([]byte("own-"), d.Wrapped...)) {
				t.Fatalf("dek %s of worker %d: swap not stored", d.ID, w)
			}
		}
	}
	equal(t, "counts", f.count(t, "a"), map[int]int64{2: workers*rounds*batch + contested})

	evs := f.allAudit(t)
	if want := eventsBefore + workers*rounds*2; len(evs) != want {
		t.Errorf("audit has %d events, want %d", len(evs), want)
	}
	checkChain(t, evs)
}

// testConcurrentCounter has goroutines increment a counter kept in one
// DEK's wrapped bytes with read + compare-and-swap, retrying lost swaps. The
// end value must be the number of increments: no update lost.
func testConcurrentCounter(t *testing.T, f *fixture) {
	const (
		workers = 4
		incs    = 25
	)
	f.createKey(t, "a")
	l := f.lease(t, "a", "w1")
	d := f.newDEK("a", 1)
	d.Wrapped = []byte("0")
	if err := f.s.InsertDEKs(f.ctx, []rekey.DEK{d}); err != nil {
		t.Fatalf("InsertDEKs: %v", err)
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range incs {
				for attempt := 0; ; attempt++ {
					if attempt > 10000 {
						t.Errorf("worker %d: no progress", w)
						return
					}
					cur, err := f.s.GetDEK(f.ctx, d.ID)
					if err != nil {
						t.Errorf("worker %d: GetDEK: %v", w, err)
						return
					}
					n, err := strconv.Atoi(string(cur.Wrapped))
					if err != nil {
						t.Errorf("worker %d: counter %q: %v", w, cur.Wrapped, err)
						return
					}
					sw := rekey.DEKSwap{ID: d.ID, OldWrapped: cur.Wrapped, NewWrapped: []byte(strconv.Itoa(n + 1)), NewVersion: 1}
					lost, err := f.s.SwapDEKs(f.ctx, []rekey.DEKSwap{sw}, l)
					if err != nil {
						t.Errorf("worker %d: SwapDEKs: %v", w, err)
						return
					}
					if len(lost) == 0 {
						break
					}
				}
			}
		})
	}
	wg.Wait()
	got := f.getDEK(t, d.ID)
	if string(got.Wrapped) != strconv.Itoa(workers*incs) {
		t.Errorf("counter = %s, want %d: updates were lost", got.Wrapped, workers*incs)
	}
}
