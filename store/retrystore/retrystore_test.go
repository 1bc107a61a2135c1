package retrystore_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/retry"
	"github.com/rekeyhq/rekey/store/memstore"
	"github.com/rekeyhq/rekey/store/retrystore"
	"github.com/rekeyhq/rekey/storetest"
)

// fast is a retry policy with tiny sleeps.
var fast = retry.Policy{Attempts: 3, Base: time.Microsecond, Max: 10 * time.Microsecond}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) rekey.Store { return retrystore.Wrap(memstore.New(), fast) })
}

var errDown = &rekey.UnreachableError{Service: "store:test", Err: errors.New("connection reset")}

// counting is a memstore whose Fail counts the calls per method and fails
// them as fail says (by method name and call number, from 1).
type counting struct {
	*memstore.Store
	mu    sync.Mutex
	count map[string]int
}

func newCounting(fail func(op string, n int) error) *counting {
	c := &counting{Store: memstore.New(), count: map[string]int{}}
	c.Fail = func(op string) error {
		c.mu.Lock()
		c.count[op]++
		n := c.count[op]
		c.mu.Unlock()
		if fail == nil {
			return nil
		}
		return fail(op, n)
	}
	return c
}

func (c *counting) calls(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count[op]
}

func TestTransientFailureIsRetried(t *testing.T) {
	t.Parallel()
	inner := newCounting(func(op string, n int) error {
		if op == "ListKeys" && n <= 2 {
			return errDown
		}
		return nil
	})
	s := retrystore.Wrap(inner, fast)
	if _, err := s.ListKeys(t.Context()); err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	if got := inner.calls("ListKeys"); got != 3 {
		t.Fatalf("store saw %d ListKeys, want 3", got)
	}
}

func TestAttemptsSpent(t *testing.T) {
	t.Parallel()
	inner := newCounting(func(op string, n int) error { return errDown })
	s := retrystore.Wrap(inner, fast)
	if err := s.AppendAudit(t.Context(), rekey.AuditEvent{}); !errors.Is(err, errDown) {
		t.Fatalf("AppendAudit = %v, want the transient error", err)
	}
	if got := inner.calls("AppendAudit"); got != fast.Attempts {
		t.Fatalf("store saw %d calls, want %d", got, fast.Attempts)
	}
}

func TestPermanentErrorIsNotRetried(t *testing.T) {
	t.Parallel()
	inner := newCounting(func(op string, n int) error { return rekey.ErrStale })
	s := retrystore.Wrap(inner, fast)
	if err := s.AdvanceRotation(t.Context(), rekey.RotationUpdate{}, rekey.Lease{}); !errors.Is(err, rekey.ErrStale) {
		t.Fatalf("AdvanceRotation = %v, want ErrStale", err)
	}
	if got := inner.calls("AdvanceRotation"); got != 1 {
		t.Fatalf("store saw %d calls, want 1", got)
	}
	// A real failure of the store itself, not injected, is not retried either.
	plain := newCounting(nil)
	if _, err := retrystore.Wrap(plain, fast).GetKey(t.Context(), "nope"); !errors.Is(err, rekey.ErrKeyNotFound) {
		t.Fatalf("GetKey = %v, want ErrKeyNotFound", err)
	}
	if got := plain.calls("GetKey"); got != 1 {
		t.Fatalf("store saw %d GetKey, want 1", got)
	}
}

func TestContextEndsRetry(t *testing.T) {
	t.Parallel()
	inner := newCounting(func(op string, n int) error { return errDown })
	s := retrystore.Wrap(inner, retry.Policy{Attempts: 10, Base: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Ping(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || rekey.IsTransient(err) {
		t.Fatalf("Ping = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("Ping took %v: the retry did not end with the context", d)
	}
	if got := inner.calls("Ping"); got != 1 {
		t.Fatalf("store saw %d pings, want 1", got)
	}
}

// TestEveryMethodIsRetried fails the first call of each method transiently
// and checks that the wrapper called it again.
func TestEveryMethodIsRetried(t *testing.T) {
	t.Parallel()
	inner := newCounting(func(op string, n int) error {
		if n == 1 {
			return errDown
		}
		return nil
	})
	s := retrystore.Wrap(inner, fast)
	ctx := t.Context()
	var l rekey.Lease
	now := time.Now()
	calls := map[string]func(){
		"ListDEKs":              func() { s.ListDEKs(ctx, rekey.DEKQuery{Key: "k"}) },
		"SwapDEKs":              func() { s.SwapDEKs(ctx, nil, l) },
		"CountDEKs":             func() { s.CountDEKs(ctx, "k") },
		"CreateKey":             func() { s.CreateKey(ctx, rekey.Key{}, rekey.KeyVersion{}) },
		"GetKey":                func() { s.GetKey(ctx, "k") },
		"ListKeys":              func() { s.ListKeys(ctx) },
		"UpdateKeyPolicy":       func() { s.UpdateKeyPolicy(ctx, "k", rekey.Policy{}, now) },
		"ListVersions":          func() { s.ListVersions(ctx, "k") },
		"ChangeVersionState":    func() { s.ChangeVersionState(ctx, rekey.VersionChange{}, nil) },
		"InsertDEKs":            func() { s.InsertDEKs(ctx, nil) },
		"GetDEK":                func() { s.GetDEK(ctx, "d") },
		"AcquireLease":          func() { s.AcquireLease(ctx, "k", "o", time.Minute, now) },
		"RenewLease":            func() { s.RenewLease(ctx, l, time.Minute, now) },
		"ReleaseLease":          func() { s.ReleaseLease(ctx, l) },
		"GetLease":              func() { s.GetLease(ctx, "k") },
		"BreakLease":            func() { s.BreakLease(ctx, l, now) },
		"CreateRotation":        func() { s.CreateRotation(ctx, rekey.Rotation{}, l) },
		"AdvanceRotation":       func() { s.AdvanceRotation(ctx, rekey.RotationUpdate{}, l) },
		"GetRotation":           func() { s.GetRotation(ctx, "r") },
		"OpenRotation":          func() { s.OpenRotation(ctx, "k") },
		"ListRotations":         func() { s.ListRotations(ctx, rekey.RotationQuery{}) },
		"AppendAudit":           func() { s.AppendAudit(ctx) },
		"ListAudit":             func() { s.ListAudit(ctx, rekey.AuditQuery{}) },
		"AppendAuditCheckpoint": func() { s.AppendAuditCheckpoint(ctx, rekey.AuditCheckpoint{}) },
		"ListAuditCheckpoints":  func() { s.ListAuditCheckpoints(ctx, 0, 10) },
		"LastAuditCheckpoint":   func() { s.LastAuditCheckpoint(ctx) },
		"Ping":                  func() { s.Ping(ctx) },
	}
	for op, call := range calls {
		call()
		if got := inner.calls(op); got < 2 {
			t.Errorf("%s: store saw %d call(s) after a transient failure of the first, want a retry", op, got)
		}
	}
}

// batchStore is a memstore with a CommitBatch that fails transiently once.
type batchStore struct {
	*memstore.Store
	calls int
}

func (b *batchStore) CommitBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, cp rekey.RotationUpdate) ([]string, error) {
	b.calls++
	if b.calls == 1 {
		return nil, errDown
	}
	return []string{"lost-1"}, nil
}

// storeOnly has only the methods of rekey.Store.
type storeOnly struct{ rekey.Store }

func TestCommitBatch(t *testing.T) {
	t.Parallel()
	b := &batchStore{Store: memstore.New()}
	lost, err := retrystore.Wrap(b, fast).CommitBatch(t.Context(), nil, rekey.Lease{}, rekey.RotationUpdate{})
	if err != nil || !slices.Equal(lost, []string{"lost-1"}) {
		t.Fatalf("CommitBatch = %v, %v; want the inner store's answer", lost, err)
	}
	if b.calls != 2 {
		t.Fatalf("inner CommitBatch called %d times, want 2 (one retry)", b.calls)
	}

	inner := storeOnly{memstore.New()}
	_, err = retrystore.Wrap(inner, fast).CommitBatch(t.Context(), nil, rekey.Lease{}, rekey.RotationUpdate{})
	if _, ok := any(inner).(rekey.BatchCommitter); !ok {
		// rekey.Store does not (yet) include CommitBatch.
		if !errors.Is(err, rekey.ErrUnsupported) {
			t.Fatalf("CommitBatch on a store without it = %v, want ErrUnsupported", err)
		}
	} else if errors.Is(err, rekey.ErrUnsupported) {
		t.Fatalf("CommitBatch on a store with it = %v, want it passed on", err)
	}
}

func TestUnwrapAndClose(t *testing.T) {
	t.Parallel()
	inner := memstore.New()
	s := retrystore.Wrap(inner, fast)
	if s.Unwrap() != rekey.Store(inner) || retrystore.Unwrap(s) != rekey.Store(inner) {
		t.Fatal("Unwrap does not give the inner store back")
	}
	if retrystore.Unwrap(inner) != rekey.Store(inner) {
		t.Fatal("Unwrap of an unwrapped store is not itself")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := inner.Ping(t.Context()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("inner Ping after Close = %v: Close was not passed on", err)
	}
}

// writers is a memstore that says how many writers it takes at once.
type writers struct {
	*memstore.Store
	n int
}

func (w writers) ConcurrentWrites() int { return w.n }

// TestConcurrentWritesForwarded: the engine sees the inner store's
// rekey.ConcurrentWriter through the decorator, and 1 for a store without
// it (one range worker).
func TestConcurrentWritesForwarded(t *testing.T) {
	if got := retrystore.Wrap(writers{memstore.New(), 5}, fast).ConcurrentWrites(); got != 5 {
		t.Errorf("ConcurrentWrites of a store taking 5 writers, wrapped = %d", got)
	}
	if got := retrystore.Wrap(memstore.New(), fast).ConcurrentWrites(); got != 1 {
		t.Errorf("ConcurrentWrites of a store without it, wrapped = %d, want 1", got)
	}
}
