package retry_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/retry"
)

var errDown = &rekey.UnreachableError{Service: "kms:test", Err: errors.New("connection reset")}

// fast retries with tiny sleeps.
var fast = retry.Policy{Attempts: 4, Base: time.Microsecond, Max: 10 * time.Microsecond}

func TestDoSucceedsAfterTransientFailures(t *testing.T) {
	t.Parallel()
	calls := 0
	err := fast.Do(t.Context(), func(context.Context) error {
		calls++
		if calls < 3 {
			return errDown
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if calls != 3 {
		t.Fatalf("fn called %d times, want 3", calls)
	}
}

func TestDoStopsAfterAttempts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		attempts, want int
	}{{1, 1}, {4, 4}, {0, retry.DefaultAttempts}} {
		p := fast
		p.Attempts = tc.attempts
		calls := 0
		err := p.Do(t.Context(), func(context.Context) error { calls++; return errDown })
		if !errors.Is(err, errDown) {
			t.Errorf("Attempts %d: Do = %v, want the last transient error", tc.attempts, err)
		}
		if calls != tc.want {
			t.Errorf("Attempts %d: fn called %d times, want %d", tc.attempts, calls, tc.want)
		}
	}
}

func TestDoDoesNotRetryPermanentErrors(t *testing.T) {
	t.Parallel()
	for _, perm := range []error{rekey.ErrKeyNotFound, errors.New("boom"), context.Canceled} {
		calls := 0
		err := fast.Do(t.Context(), func(context.Context) error { calls++; return perm })
		if !errors.Is(err, perm) || calls != 1 {
			t.Errorf("%v: Do = %v after %d calls, want it unchanged after 1", perm, err, calls)
		}
	}
}

func TestDoValue(t *testing.T) {
	t.Parallel()
	calls := 0
	v, err := retry.DoValue(t.Context(), fast, func(context.Context) (int, error) {
		calls++
		if calls == 1 {
			return 7, errDown
		}
		return 42, nil
	})
	if err != nil || v != 42 {
		t.Fatalf("DoValue = %d, %v; want 42, nil", v, err)
	}
	v, err = retry.DoValue(t.Context(), fast, func(context.Context) (int, error) { return 7, rekey.ErrStale })
	if !errors.Is(err, rekey.ErrStale) || v != 0 {
		t.Fatalf("DoValue = %d, %v; want 0, ErrStale", v, err)
	}
}

func TestDoContextEndsSleep(t *testing.T) {
	t.Parallel()
	cause := errors.New("shutting down")
	ctx, cancel := context.WithCancelCause(t.Context())
	p := retry.Policy{Attempts: 10, Base: time.Hour, Max: time.Hour}
	calls := 0
	done := make(chan error, 1)
	go func() {
		done <- p.Do(ctx, func(context.Context) error {
			calls++
			cancel(cause) // the sleep that follows must end at once
			return errDown
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, cause) {
			t.Fatalf("Do = %v, want the context's cause", err)
		}
		if rekey.IsTransient(err) {
			t.Fatalf("Do = %v: an ended context must not look transient", err)
		}
		if !strings.Contains(err.Error(), "connection reset") {
			t.Fatalf("Do = %q, want the last error's text in it", err)
		}
		if calls != 1 {
			t.Fatalf("fn called %d times, want 1", calls)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Do kept sleeping after the context ended")
	}
}

func TestBackoffNoJitter(t *testing.T) {
	t.Parallel()
	p := retry.Policy{Base: 100 * time.Millisecond, Max: time.Second, NoJitter: true}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.Backoff(i + 1); got != w*time.Millisecond {
			t.Errorf("Backoff(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	if got := p.Backoff(200); got != time.Second {
		t.Errorf("Backoff(200) = %v, want Max (no overflow)", got)
	}
	if got := p.Backoff(0); got != 100*time.Millisecond {
		t.Errorf("Backoff(0) = %v, want Base", got)
	}
	var zero retry.Policy
	zero.NoJitter = true
	if got := zero.Backoff(1); got != retry.DefaultBase {
		t.Errorf("zero Policy Backoff(1) = %v, want %v", got, retry.DefaultBase)
	}
	if got := zero.Backoff(30); got != retry.DefaultMax {
		t.Errorf("zero Policy Backoff(30) = %v, want %v", got, retry.DefaultMax)
	}
	small := retry.Policy{Base: time.Second, Max: time.Millisecond, NoJitter: true}
	if got := small.Backoff(3); got != time.Second {
		t.Errorf("Max below Base: Backoff(3) = %v, want Base", got)
	}
}

func TestBackoffJitterInRange(t *testing.T) {
	t.Parallel()
	p := retry.Policy{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for attempt := 1; attempt <= 6; attempt++ {
		ceil := min(10*time.Millisecond<<(attempt-1), 80*time.Millisecond)
		distinct := map[time.Duration]bool{}
		for range 200 {
			d := p.Backoff(attempt)
			if d <= 0 || d > ceil {
				t.Fatalf("Backoff(%d) = %v, want in (0, %v]", attempt, d, ceil)
			}
			distinct[d] = true
		}
		if len(distinct) < 10 {
			t.Fatalf("Backoff(%d) gave %d distinct values in 200 draws: no jitter?", attempt, len(distinct))
		}
	}
}
