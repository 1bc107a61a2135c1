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
			now := rekey.NormalizeTime(time.Now())
			k := rekey.Key{Name: "k", Backend: "local", BackendRef: "k", ActiveVersion: 1, Policy: rekey.DefaultPolicy(), ExpiresAt: now.Add(time.Hour)}
			if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.pool.Exec(ctx, `INSERT INTO key_versions (key, version, state) VALUES ('k', 2, 'created')`); err != nil {
				t.Fatal(err)
			}
			deks := []rekey.DEK{{ID: rekey.NewID(), Key: "k", Version: 1, Wrapped: []byte("w0")}, {ID: rekey.NewID(), Key: "k", Version: 1, Wrapped: []byte("w1")}}
			if err := s.InsertDEKs(ctx, deks); err != nil {
				t.Fatal(err)
			}
			l, err := s.AcquireLease(ctx, "k", "w", time.Hour, now)
			if err != nil {
				t.Fatal(err)
			}
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
			for i := 0; ; i++ {
				var waiting int
				if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&waiting); err != nil {
					t.Fatal(err)
				}
				if waiting > 0 {
					break
				}
				if i == 500 {
					t.Fatal("the swap never waited for the row lock")
				}
				time.Sleep(10 * time.Millisecond)
			}
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
