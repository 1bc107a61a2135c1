package kmsmw_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/faultkms"
	"github.com/rekeyhq/rekey/kms/kmsmw"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/retry"
)

// fakeClock is a clock that moves only when slept on or advanced.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Advance(d)
	return nil
}

// slowKMS is a backend whose every Wrap takes cost on the fake clock.
type slowKMS struct {
	rekey.KMS
	clock *fakeClock
	cost  time.Duration
}

func (s slowKMS) Wrap(ctx context.Context, ref string, version int, pt []byte) ([]byte, error) {
	s.clock.Advance(s.cost)
	return s.KMS.Wrap(ctx, ref, version, pt)
}

// countingObserver counts results.
type countingObserver struct {
	mu      sync.Mutex
	results map[string]int
}

func (o *countingObserver) KMSCall(_, _, result string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.results == nil {
		o.results = map[string]int{}
	}
	o.results[result]++
}

// throttleRun makes n successful Wraps through kmsmw (rate limit rps) in
// front of a backend that throttles above limit requests/s, one caller
// retrying each throttled call, on a fake clock. It returns the calls by
// result, the fake time taken and the wrapper.
func throttleRun(t *testing.T, n int, rps, limit float64) (map[string]int, time.Duration, *kmsmw.KMS) {
	t.Helper()
	ctx := t.Context()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	inner := memkms.New()
	ref, err := inner.CreateKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	// 0.5 ms a call: the backend alone would take 2000 requests/s.
	faulty := faultkms.Wrap(slowKMS{KMS: inner, clock: clock, cost: 500 * time.Microsecond},
		faultkms.Config{ThrottleAbove: limit, Now: clock.Now})
	obs := &countingObserver{}
	k := kmsmw.Wrap(faulty, kmsmw.Options{Name: "t", RateLimit: rps, Retry: retry.Once, Observer: obs, Now: clock.Now, Sleep: clock.Sleep})
	start := clock.Now()
	for i := range n {
		for tries := 0; ; tries++ {
			_, err := k.Wrap(ctx, ref, 1, []byte("0123456789abcdef0123456789abcdef"))
			if err == nil {
				break
			}
			if !errors.Is(err, rekey.ErrThrottled) || !rekey.IsTransient(err) {
				t.Fatalf("call %d: %v, want nil or a transient throttling", i, err)
			}
			if tries > 1000 {
				t.Fatalf("call %d: throttled %d times in a row: the rate never came down", i, tries)
			}
		}
	}
	return obs.results, clock.Now().Sub(start), k
}

// TestAdaptiveRateUnderThrottling: with the backend throttling above 500
// requests/s, the wrapper settles near that rate, with few of its calls
// throttled, whether it was configured above the quota or not at all.
func TestAdaptiveRateUnderThrottling(t *testing.T) {
	t.Parallel()
	const n, limit = 20_000, 500.0
	for _, rps := range []float64{0, 800, 2000} {
		t.Run(fmt.Sprintf("rate_limit=%v", rps), func(t *testing.T) {
			t.Parallel()
			res, took, k := throttleRun(t, n, rps, limit)
			if res[kmsmw.ResultSuccess] != n {
				t.Fatalf("successes = %d, want %d (%v)", res[kmsmw.ResultSuccess], n, res)
			}
			if res[kmsmw.ResultFailure] != 0 {
				t.Errorf("%d calls failed otherwise than throttled", res[kmsmw.ResultFailure])
			}
			calls := res[kmsmw.ResultSuccess] + res[kmsmw.ResultThrottled]
			share := float64(res[kmsmw.ResultThrottled]) / float64(calls)
			sustained := float64(n) / took.Seconds()
			t.Logf("%d calls, %d throttled (%.2f%%), %.0f successful requests/s over %v; rate now %.0f/s",
				calls, res[kmsmw.ResultThrottled], 100*share, sustained, took, k.CurrentRate())
			if res[kmsmw.ResultThrottled] == 0 && rps > limit {
				t.Errorf("no call throttled: the test does not test the throttling")
			}
			if share > 0.05 {
				t.Errorf("%.2f%% of calls throttled, want at most 5%%", 100*share)
			}
			if sustained < 400 {
				t.Errorf("sustained %.0f requests/s, want at least 400 (0.8 of the quota)", sustained)
			}
			if r := k.CurrentRate(); r <= 0 || r > max(rps, limit*1.5) {
				t.Errorf("rate in force = %v, want a limit near the quota", r)
			}
		})
	}
}

// TestAdaptiveRateRecovers: after throttling stops, the rate climbs back
// to the configured limit, additively; below the quota nothing is lowered.
func TestAdaptiveRateRecovers(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	throttle := true
	inner := throttlingKMS{KMS: memkms.New(), on: &throttle}
	k := kmsmw.Wrap(inner, kmsmw.Options{Name: "t", RateLimit: 100, Retry: retry.Once, Now: clock.Now, Sleep: clock.Sleep})
	if r := k.CurrentRate(); r != 100 {
		t.Fatalf("rate before throttling = %v, want 100", r)
	}
	if _, err := k.CurrentVersion(ctx, "x"); !errors.Is(err, rekey.ErrThrottled) || !rekey.IsTransient(err) {
		t.Fatalf("throttled call: %v, want a transient rekey.ErrThrottled", err)
	}
	if r := k.CurrentRate(); r != 100*kmsmw.DecreaseFactor {
		t.Fatalf("rate after one throttling = %v, want %v", r, 100*kmsmw.DecreaseFactor)
	}
	// A second throttled call right after (within the cooldown: the same
	// congestion event) does not lower it again; the wait for its turn
	// (1/70 s) recovers a little.
	_, _ = k.CurrentVersion(ctx, "x")
	if r := k.CurrentRate(); r < 100*kmsmw.DecreaseFactor || r > 100*kmsmw.DecreaseFactor+1 {
		t.Fatalf("rate after a second throttling at once = %v, want %v still", r, 100*kmsmw.DecreaseFactor)
	}
	throttle = false
	clock.Advance(2 * time.Second)
	want := 100*kmsmw.DecreaseFactor + 2*kmsmw.IncreasePerSecond*100
	if r := k.CurrentRate(); r < want || r > want+0.2 {
		t.Fatalf("rate 2 s later = %v, want %v (+%v%% of 100 a second)", r, want, 100*kmsmw.IncreasePerSecond)
	}
	clock.Advance(time.Minute)
	if r := k.CurrentRate(); r != 100 {
		t.Fatalf("rate a minute later = %v, want back at the configured 100", r)
	}
}

// throttlingKMS refuses CurrentVersion with a bare rekey.ErrThrottled
// while *on (kmsmw makes it transient).
type throttlingKMS struct {
	rekey.KMS
	on *bool
}

func (k throttlingKMS) CurrentVersion(ctx context.Context, ref string) (int, error) {
	if *k.on {
		return 0, fmt.Errorf("quota: %w", rekey.ErrThrottled)
	}
	return 1, nil
}
