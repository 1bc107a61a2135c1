package rotation

// TEMPORARY: stands in for retry.Policy until branch mw lands; then
// Config.RotateRetry becomes a retry.Policy and this file goes.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/rekeyhq/rekey"
)

// RotatePolicy is a backoff policy (stand-in for retry.Policy).
type RotatePolicy struct {
	Attempts int
	Base     time.Duration
	Max      time.Duration
	NoJitter bool
}

func (p RotatePolicy) withDefaults() RotatePolicy {
	if p.Attempts <= 0 {
		p.Attempts = 5
	}
	if p.Base <= 0 {
		p.Base = 200 * time.Millisecond
	}
	if p.Max < p.Base {
		p.Max = max(p.Base, 10*time.Second)
	}
	return p
}

// Do runs fn until it succeeds, fails with an error that is not transient,
// or the attempts are spent.
func (p RotatePolicy) Do(ctx context.Context, fn func(context.Context) error) error {
	p = p.withDefaults()
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !rekey.IsTransient(err) || attempt >= p.Attempts {
			return err
		}
		ceil := min(p.Max, p.Base<<min(attempt-1, 30))
		if !p.NoJitter {
			ceil = time.Duration(rand.Int64N(int64(ceil))) + 1
		}
		t := time.NewTimer(ceil)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (while retrying: %v)", context.Cause(ctx), err)
		case <-t.C:
		}
	}
}
