package storetest

import (
	"errors"
	"sync"
	"testing"

	"github.com/rekeyhq/rekey"
)

func testWrapCountsReserve(t *testing.T, f *fixture) {
	count := func(backend, ref string, version int) int64 {
		t.Helper()
		n, err := f.s.WrapCount(f.ctx, backend, ref, version)
		if err != nil {
			t.Fatalf("WrapCount(%s, %s, %d): %v", backend, ref, version, err)
		}
		return n
	}
	if n := count("aws", "arn:1", 1); n != 0 {
		t.Fatalf("WrapCount of a version never counted = %d, want 0", n)
	}
	r := rekey.WrapReservation{Backend: "aws", Ref: "arn:1", Version: 1, N: 4, Limit: 10}
	for i, want := range []struct{ total, granted int64 }{{4, 4}, {8, 4}, {10, 2}} {
		total, granted, err := f.s.ReserveWraps(f.ctx, r)
		if err != nil {
			t.Fatalf("ReserveWraps #%d: %v", i+1, err)
		}
		if total != want.total || granted != want.granted {
			t.Errorf("ReserveWraps #%d = (total %d, granted %d), want (%d, %d)", i+1, total, granted, want.total, want.granted)
		}
	}
	_, _, err := f.s.ReserveWraps(f.ctx, r)
	var ule *rekey.UsageLimitError
	if !errors.Is(err, rekey.ErrUsageLimit) || !errors.As(err, &ule) || ule.Limit != 10 || ule.Count != 10 {
		t.Fatalf("ReserveWraps past the limit = %v, want a *UsageLimitError with count 10 and limit 10", err)
	}
	if n := count("aws", "arn:1", 1); n != 10 {
		t.Errorf("WrapCount after a refused reservation = %d, want 10 (unchanged)", n)
	}
	// Counts are per backend, ref and version; limit 0 means none.
	if total, granted, err := f.s.ReserveWraps(f.ctx, rekey.WrapReservation{Backend: "aws", Ref: "arn:1", Version: 2, N: 1 << 40}); err != nil || total != 1<<40 || granted != 1<<40 {
		t.Errorf("ReserveWraps with no limit = (%d, %d, %v), want all 2^40", total, granted, err)
	}
	if _, _, err := f.s.ReserveWraps(f.ctx, rekey.WrapReservation{Backend: "vault", Ref: "arn:1", Version: 1, N: 3}); err != nil {
		t.Fatalf("ReserveWraps on another backend: %v", err)
	}
	for _, c := range []struct {
		backend, ref string
		version      int
		want         int64
	}{{"aws", "arn:1", 1, 10}, {"aws", "arn:1", 2, 1 << 40}, {"vault", "arn:1", 1, 3}, {"aws", "arn:2", 1, 0}} {
		if n := count(c.backend, c.ref, c.version); n != c.want {
			t.Errorf("WrapCount(%s, %s, %d) = %d, want %d", c.backend, c.ref, c.version, n, c.want)
		}
	}
}

func testWrapCountsInvalid(t *testing.T, f *fixture) {
	for _, r := range []rekey.WrapReservation{
		{Ref: "r", Version: 1, N: 1},
		{Backend: "b", Version: 1, N: 1},
		{Backend: "b", Ref: "r", Version: 0, N: 1},
		{Backend: "b", Ref: "r", Version: 1, N: 0},
		{Backend: "b", Ref: "r", Version: 1, N: 1, Limit: -1},
	} {
		if _, _, err := f.s.ReserveWraps(f.ctx, r); !errors.Is(err, rekey.ErrInvalidArgument) {
			t.Errorf("ReserveWraps(%+v) = %v, want ErrInvalidArgument", r, err)
		}
	}
	if n, err := f.s.WrapCount(f.ctx, "b", "r", 1); err != nil || n != 0 {
		t.Errorf("WrapCount after refused reservations = (%d, %v), want 0", n, err)
	}
}

// testWrapCountsConcurrent: reservations from many goroutines add up, and
// together never pass the limit.
func testWrapCountsConcurrent(t *testing.T, f *fixture) {
	const workers, each, limit = 8, 20, 100
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		granted int64
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				_, g, err := f.s.ReserveWraps(f.ctx, rekey.WrapReservation{Backend: "b", Ref: "r", Version: 1, N: 1, Limit: limit})
				if errors.Is(err, rekey.ErrUsageLimit) {
					continue
				}
				if err != nil && rekey.IsTransient(err) {
					continue // a busy database: this reservation was not made
				}
				if err != nil {
					t.Errorf("ReserveWraps: %v", err)
					return
				}
				mu.Lock()
				granted += g
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	n, err := f.s.WrapCount(f.ctx, "b", "r", 1)
	if err != nil {
		t.Fatal(err)
	}
	if n != granted || n > limit {
		t.Errorf("WrapCount = %d after granting %d in all (limit %d): want equal, and at most the limit", n, granted, limit)
	}
	if n != limit {
		t.Errorf("WrapCount = %d, want %d: %d reservations of 1 should reach the limit", n, limit, workers*each)
	}
}
