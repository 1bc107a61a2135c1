package rotation

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/rekeyhq/rekey"
)

// retry runs fn until it succeeds, fails with an error that is not
// transient, or the policy's attempts are spent. Between tries it sleeps a
// full-jitter exponential backoff; a context that ends during the sleep
// ends the retry with the context's error (wrapping the last failure's text).
func (e *Engine) retry(ctx context.Context, fn func(context.Context) error) error {
	p := e.cfg.Retry
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !rekey.IsTransient(err) || attempt >= p.Attempts {
			return err
		}
		t := time.NewTimer(p.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (while retrying: %v)", context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// backoff is the sleep before try attempt+1.
func (p RetryPolicy) backoff(attempt int) time.Duration {
	ceil := p.Max
	if shift := attempt - 1; shift < 32 {
		if d := p.Base << shift; d > 0 && d < p.Max {
			ceil = d
		}
	}
	if p.NoJitter {
		return ceil
	}
	return time.Duration(rand.Int64N(int64(ceil))) + 1
}
