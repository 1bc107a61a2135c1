package rotation

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEach: every index once, at most workers at a time; the first error
// is returned and the loop stops; a cancelled ctx ends the loop with its
// cause before any call.
func TestEach(t *testing.T) {
	t.Parallel()
	var (
		mu              sync.Mutex
		seen            = map[int]int{}
		inFlight, peakN atomic.Int64
	)
	err := each(t.Context(), 100, 4, func(ctx context.Context, i int) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peakN.Load(); n > p && !peakN.CompareAndSwap(p, n); p = peakN.Load() {
		}
		time.Sleep(100 * time.Microsecond)
		mu.Lock()
		seen[i]++
		mu.Unlock()
		return nil
	})
	if err != nil || len(seen) != 100 || peakN.Load() > 4 {
		t.Fatalf("each = %v, %d indexes, %d at once; want nil, 100, at most 4", err, len(seen), peakN.Load())
	}
	for i, c := range seen {
		if c != 1 {
			t.Fatalf("index %d called %d times", i, c)
		}
	}

	boom := errors.New("boom")
	var called atomic.Int64
	err = each(t.Context(), 1000, 3, func(ctx context.Context, i int) error {
		called.Add(1)
		if i == 10 {
			return boom
		}
		time.Sleep(50 * time.Microsecond)
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("each with a failing call = %v, want it", err)
	}
	if n := called.Load(); n >= 1000 {
		t.Fatalf("%d of 1000 calls after the 11th failed: the loop did not stop", n)
	}

	ctx, cancel := context.WithCancelCause(t.Context())
	stop := errors.New("stopped")
	cancel(stop)
	calls := 0
	if err := each(ctx, 10, 2, func(context.Context, int) error { calls++; return nil }); !errors.Is(err, stop) || calls != 0 {
		t.Fatalf("each on a cancelled ctx = %v after %d calls, want its cause and none", err, calls)
	}
}
