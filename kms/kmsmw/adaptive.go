package kmsmw

import (
	"context"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The adaptive rate (AIMD, as TCP shares a link): a throttled request
// (rekey.ErrThrottled) lowers the rate multiplicatively, a second without
// throttling raises it additively, up to the ceiling. So a rotation takes
// what the applications leave of a shared KMS quota instead of failing or
// starving them.
const (
	// DecreaseFactor multiplies the rate on throttling.
	DecreaseFactor = 0.7
	// IncreasePerSecond is the share of the ceiling added back per second
	// without throttling.
	IncreasePerSecond = 0.05
	// decreaseCooldown: throttles within it of a decrease are the same
	// congestion event (requests already in flight at the old rate).
	decreaseCooldown = 100 * time.Millisecond
	// observeWindow is the window of the observed success rate.
	observeWindow = time.Second
)

// adaptive is the rate limiter with its AIMD state. Every method is safe
// for concurrent use.
type adaptive struct {
	now   func() time.Time
	sleep func(context.Context, time.Duration) error

	mu           sync.Mutex
	limiter      *rate.Limiter // nil: no limit (none configured, never throttled)
	configured   float64       // Options.RateLimit; 0 = none
	ceiling      float64       // recovery stops here: configured, else the rate when limiting began
	current      float64       // the limiter's rate
	gen          uint64        // bumped by each decrease
	lastDecrease time.Time
	lastChange   time.Time // of current, for the additive increase

	// Successes in the current and the previous window: the observed rate.
	winStart         time.Time
	winCount         int
	prevRate         float64
	prevRateMeasured bool
}

func newAdaptive(rps float64, burst int, now func() time.Time, sleep func(context.Context, time.Duration) error) *adaptive {
	a := &adaptive{now: now, sleep: sleep, configured: rps, ceiling: rps, current: rps}
	if burst <= 0 {
		burst = 1
	}
	if rps > 0 {
		a.limiter = rate.NewLimiter(rate.Limit(rps), burst)
	}
	return a
}

// rateNow returns the rate in force (0: no limit).
func (a *adaptive) rateNow() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recoverLocked(a.now())
	if a.limiter == nil {
		return 0
	}
	return a.current
}

// wait blocks until one request may go, and returns the decrease
// generation it went in. errDeadline reports that ctx's deadline would
// pass first (nothing waited for).
func (a *adaptive) wait(ctx context.Context) (gen uint64, err error) {
	a.mu.Lock()
	now := a.now()
	a.recoverLocked(now)
	gen = a.gen
	if a.limiter == nil {
		a.mu.Unlock()
		return gen, nil
	}
	r := a.limiter.ReserveN(now, 1)
	a.mu.Unlock()
	if !r.OK() {
		return gen, errDeadline
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return gen, nil
	}
	if dl, ok := ctx.Deadline(); ok && dl.Before(now.Add(d)) {
		r.CancelAt(now)
		return gen, errDeadline
	}
	if err := a.sleep(ctx, d); err != nil {
		r.CancelAt(a.now())
		return gen, err
	}
	return gen, nil
}

// success counts a request the backend accepted, for the observed rate.
func (a *adaptive) success() {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	a.rollLocked(now)
	a.winCount++
}

func (a *adaptive) rollLocked(now time.Time) {
	if a.winStart.IsZero() {
		a.winStart = now
		return
	}
	if el := now.Sub(a.winStart); el >= observeWindow {
		a.prevRate = float64(a.winCount) / el.Seconds()
		a.prevRateMeasured = true
		a.winStart, a.winCount = now, 0
	}
}

// observedLocked is the success rate of the last full window, else of the
// current one so far; 0 when nothing can be told yet.
func (a *adaptive) observedLocked(now time.Time) float64 {
	a.rollLocked(now)
	if a.prevRateMeasured {
		return a.prevRate
	}
	if el := now.Sub(a.winStart).Seconds(); el > 0 && a.winCount > 0 {
		return float64(a.winCount) / el
	}
	return 0
}

// throttled lowers the rate after a request sent in generation gen was
// throttled, and reports the new rate and whether it changed. One
// congestion event lowers it once: requests sent before the last decrease,
// or within decreaseCooldown of it, change nothing.
func (a *adaptive) throttled(gen uint64) (float64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if gen != a.gen || (!a.lastDecrease.IsZero() && now.Sub(a.lastDecrease) < decreaseCooldown) {
		return a.current, false
	}
	obs := a.observedLocked(now)
	base := a.current
	if a.limiter == nil {
		// No rate configured: start limiting at the rate the backend
		// accepted, which is what it grants us.
		base = obs
		if base <= 0 {
			base = 1
		}
		a.ceiling = base
	} else if obs > 0 && obs < base {
		base = obs // the backend granted less than we asked for
	}
	next := math.Max(base*DecreaseFactor, a.floorLocked())
	a.current = next
	if a.limiter == nil {
		a.limiter = rate.NewLimiter(rate.Limit(next), 1)
	} else {
		a.limiter.SetLimitAt(now, rate.Limit(next))
	}
	a.gen++
	a.lastDecrease, a.lastChange = now, now
	return next, true
}

// floorLocked is the lowest rate a decrease goes to: 1% of the ceiling,
// at least one request per second.
func (a *adaptive) floorLocked() float64 { return math.Max(1, a.ceiling/100) }

// recoverLocked adds IncreasePerSecond of the ceiling for each second
// since the rate last changed, up to the ceiling.
func (a *adaptive) recoverLocked(now time.Time) {
	if a.limiter == nil || a.current >= a.ceiling || a.lastChange.IsZero() {
		return
	}
	el := now.Sub(a.lastChange).Seconds()
	if el <= 0 {
		return
	}
	a.current = math.Min(a.ceiling, a.current+IncreasePerSecond*a.ceiling*el)
	a.lastChange = now
	a.limiter.SetLimitAt(now, rate.Limit(a.current))
}

type deadlineError struct{}

func (deadlineError) Error() string {
	return "the context's deadline would pass before the request's turn"
}

var errDeadline error = deadlineError{}

// sleepCtx sleeps d, or until ctx ends (its cause).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
