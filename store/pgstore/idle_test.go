package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
)

// TestIdleInTransactionTimeout: the store's sessions end a transaction
// left idle (a paused replica's) after idleInTxTimeout, so that its row
// locks — its lease row FOR SHARE — do not block the replica taking the
// key over; a DSN that sets the parameter keeps its own value.
// idleParam is the server setting (spelled out: the test compiles on the
// code before it).
const idleParam = "idle_in_transaction_session_timeout"

func TestIdleInTransactionTimeout(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	var v string
	if err := s.pool.QueryRow(ctx, "SHOW "+idleParam).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "10s" {
		t.Errorf("%s = %q, want 10s", idleParam, v)
	}

	own, err := Open(ctx, Config{DSN: withParam(t, newSchema(t), idleParam, "1500"), MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if err := own.pool.QueryRow(ctx, "SHOW "+idleParam).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "1500ms" {
		t.Errorf("with %s=1500 in the DSN: %q, want 1500ms", idleParam, v)
	}

	// A session of own stuck in a transaction holding the lease row FOR
	// SHARE (as a fenced write does) is ended by the server, and another
	// owner then acquires the expired lease.
	l, err := own.AcquireLease(ctx, "k", "paused", time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tx, err := own.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkFence(ctx, tx, "k", l); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	acquireCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var l2 rekey.Lease
	for {
		l2, err = own.AcquireLease(acquireCtx, "k", "other", time.Second, time.Now())
		if err == nil || acquireCtx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // held until it expires: try again
	}
	if err != nil || l2.Epoch != l.Epoch+1 {
		t.Fatalf("acquire by another owner while a transaction holds the lease row: %+v, %v; want epoch %d", l2, err, l.Epoch+1)
	}
	t.Logf("acquired %v after the paused transaction began", time.Since(start).Round(time.Millisecond))
	if err := tx.Commit(ctx); err == nil {
		t.Error("the ended transaction committed")
	}
}
