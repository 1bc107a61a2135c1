package pgstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// TestFenceHoldsOffTakeover: while a write fenced by a lease is in flight
// (its transaction has checked the fence), another owner cannot take the
// expired lease over; it gets it, with the next epoch, once the write has
// committed. Without the FOR SHARE lock of checkFence the takeover would
// commit first and the fenced write would then commit under a lease that
// had moved on.
func TestFenceHoldsOffTakeover(t *testing.T) {
	t.Parallel()
	s := openTemp(t)
	ctx := t.Context()
	now := rekey.NormalizeTime(time.Now())
	k := rekey.Key{Name: "a", Backend: "local", BackendRef: "a", ActiveVersion: 1, Policy: rekey.DefaultPolicy()}
	if err := s.CreateKey(ctx, k, rekey.KeyVersion{Version: 1}); err != nil {
		t.Fatal(err)
	}
	old, err := s.AcquireLease(ctx, "a", "paused", time.Second, now)
	if err != nil {
		t.Fatal(err)
	}
	// The paused worker's write: fence checked, not committed yet.
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if err := checkFence(ctx, tx, "a", old); err != nil {
		t.Fatal(err)
	}
	type result struct {
		l   rekey.Lease
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := s.AcquireLease(ctx, "a", "taker", time.Minute, now.Add(time.Hour))
		done <- result{l, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("the takeover did not wait for the fenced write: %+v, %v", r.l, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.l.Owner != "taker" || r.l.Epoch != old.Epoch+1 {
			t.Fatalf("takeover = %+v, %v; want taker with epoch %d", r.l, r.err, old.Epoch+1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the takeover is still waiting after the fenced write committed")
	}
	// From now on the paused worker's writes are fenced.
	if _, err := s.SwapDEKs(ctx, nil, old); !errors.Is(err, rekey.ErrFenced) {
		t.Errorf("a write under the old lease after the takeover: %v; want ErrFenced", err)
	}
}
