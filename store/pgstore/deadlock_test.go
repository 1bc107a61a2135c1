package pgstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// TestSwapSurvivesDeadlock: another transaction holds the second row of a
// swap and then asks for the first, which the swap's first statement has
// locked. PostgreSQL cancels the swap's statement (it waited first, and the
// other side's deadlock_timeout is longer); the swap goes back to its
// savepoint, which lets the other transaction through, and takes both rows
// with the locked statement once it is gone. Without the way back, the
// whole SwapDEKs failed with the deadlock. For the guessed statement (the
// swaps carry their old version, as a re-wrap's do) and the fast one.
func TestSwapSurvivesDeadlock(t *testing.T) {
	for _, hint := range []int{1, 0} {
		t.Run(fmt.Sprintf("OldVersion=%d", hint), func(t *testing.T) {
			s := openTemp(t)
			ctx := t.Context()
			l, deks := swapFixture(t, s, 2)
			other, err := s.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = other.Rollback(ctx) }()
			if _, err := other.Exec(ctx, `SET LOCAL deadlock_timeout = '20s'`); err != nil {
				t.Fatal(err)
			}
			if _, err := other.Exec(ctx, `UPDATE deks SET label = 'other' WHERE id = $1`, deks[1].ID); err != nil {
				t.Fatal(err)
			}
			type result struct {
				lost []string
				err  error
			}
			done := make(chan result, 1)
			go func() {
				lost, err := s.SwapDEKs(ctx, []rekey.DEKSwap{
					{ID: deks[0].ID, OldWrapped: []byte("w0"), NewWrapped: []byte("n0"), NewVersion: 2, OldVersion: hint},
					{ID: deks[1].ID, OldWrapped: []byte("w1"), NewWrapped: []byte("n1"), NewVersion: 2, OldVersion: hint},
				}, l)
				done <- result{lost, err}
			}()
			waitForLockWait(t, s)
			// Blocks until PostgreSQL cancels the swap's statement.
			start := time.Now()
			if _, err := other.Exec(ctx, `UPDATE deks SET label = 'other' WHERE id = $1`, deks[0].ID); err != nil {
				t.Fatalf("the other transaction's second row: %v", err)
			}
			if time.Since(start) < 100*time.Millisecond {
				t.Fatalf("the other transaction got the swap's first row at once (%v): the swap never held it", time.Since(start))
			}
			if err := other.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil || len(r.lost) != 0 {
				t.Fatalf("SwapDEKs through a deadlock = %v, %v; want both swaps applied", r.lost, r.err)
			}
			for i, d := range deks {
				got, err := s.GetDEK(ctx, d.ID)
				if err != nil || string(got.Wrapped) != fmt.Sprintf("n%d", i) || got.Version != 2 || got.Label != "" {
					t.Errorf("dek %d after the swap: %+v, %v; want n%d on version 2, no label", i, got, err, i)
				}
			}
			if got, err := s.CountDEKs(ctx, "k"); err != nil || fmt.Sprint(got) != fmt.Sprint(map[int]int64{2: 2}) {
				t.Errorf("CountDEKs(k) = %v, %v; want 2: 2", got, err)
			}
		})
	}
}
