// Package retry is the one retry loop of the project: exponential backoff
// with full jitter around a call that may fail transiently
// (rekey.IsTransient). Decorators apply it once per backend request
// (kms/kmsmw, store/retrystore), so that retries are never nested.
package retry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/rekeyhq/rekey"
)

// Defaults used for the zero fields of a Policy.
const (
	DefaultAttempts = 5
	DefaultBase     = 200 * time.Millisecond
	DefaultMax      = 10 * time.Second
)

// Policy is exponential backoff with full jitter: before try n+1 it sleeps
// a random duration in (0, min(Max, Base·2^(n-1))], and it makes at most
// Attempts tries in all. The zero Policy is DefaultAttempts tries with
// DefaultBase and DefaultMax. A Policy is a value: safe for concurrent use.
type Policy struct {
	Attempts int           // tries in all, the first included; 0 means 5
	Base     time.Duration // ceiling of the first backoff; 0 means 200ms
	Max      time.Duration // largest backoff ceiling; 0 means 10s
	NoJitter bool          // sleep the whole ceiling (deterministic tests)
}

// withDefaults fills the zero (or negative) fields. A Max below Base is
// raised to Base.
func (p Policy) withDefaults() Policy {
	if p.Attempts <= 0 {
		p.Attempts = DefaultAttempts
	}
	if p.Base <= 0 {
		p.Base = DefaultBase
	}
	if p.Max <= 0 {
		p.Max = DefaultMax
	}
	if p.Max < p.Base {
		p.Max = p.Base
	}
	return p
}

// Once is a Policy that makes a single try: Do calls fn once and returns
// its error.
var Once = Policy{Attempts: 1}

// Do runs fn until it succeeds, fails with an error that is not transient
// (rekey.IsTransient), or the attempts are spent, and returns fn's last
// error (nil on success). fn gets ctx. A context that ends during a sleep
// between tries ends Do with an error that wraps the context's cause
// (context.Cause) and carries the last error's text; the last error itself
// is then not in the chain, so errors.Is(err, context.Canceled) (or
// DeadlineExceeded) holds and rekey.IsTransient does not.
func (p Policy) Do(ctx context.Context, fn func(context.Context) error) error {
	p = p.withDefaults()
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !rekey.IsTransient(err) || attempt >= p.Attempts {
			return err
		}
		if cause := sleep(ctx, p.Backoff(attempt)); cause != nil {
			return fmt.Errorf("%w (while retrying: %v)", cause, err)
		}
	}
}

// DoValue is Do for a call that returns a value: it returns the value of
// the successful try, or the zero T and Do's error.
func DoValue[T any](ctx context.Context, p Policy, fn func(context.Context) (T, error)) (T, error) {
	var v T
	err := p.Do(ctx, func(ctx context.Context) error {
		var err error
		v, err = fn(ctx)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

// Backoff returns the sleep before try attempt+1 (attempt counts from 1):
// with NoJitter the ceiling min(Max, Base·2^(attempt-1)), else a uniform
// random duration in (0, ceiling]. It is exported for tests.
func (p Policy) Backoff(attempt int) time.Duration {
	p = p.withDefaults()
	ceil := p.Max
	if shift := max(attempt-1, 0); shift < 62 {
		// d>>shift == Base rules out an overflow of the shift.
		if d := p.Base << shift; d>>shift == p.Base && d < p.Max {
			ceil = d
		}
	}
	if p.NoJitter {
		return ceil
	}
	return time.Duration(rand.Int64N(int64(ceil))) + 1
}

// sleep waits d or until ctx ends, whichever is first, and then returns
// nil or the context's cause.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
