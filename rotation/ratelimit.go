package rotation

import (
	"context"
	"sync"
	"time"
)

// rateLimiter spaces calls at least every apart (no burst): a backend
// rate limit such as worker.kms_rate_limit, shared by every goroutine that
// calls one backend. A batch call counts as one request, as the backends'
// own quotas count it.
type rateLimiter struct {
	every time.Duration
	mu    sync.Mutex
	next  time.Time
}

func newRateLimiter(perSecond float64) *rateLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &rateLimiter{every: time.Duration(float64(time.Second) / perSecond)}
}

// wait blocks until the caller may make its call, or ctx ends. A nil
// limiter never waits.
func (l *rateLimiter) wait(ctx context.Context) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(l.every)
	l.mu.Unlock()
	d := time.Until(at)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// limiterFor returns the limiter of the named backend, made on first use.
func (e *Engine) limiterFor(backend string) *rateLimiter {
	if e.cfg.KMSRateLimit <= 0 {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	l, ok := e.limiters[backend]
	if !ok {
		l = newRateLimiter(e.cfg.KMSRateLimit)
		e.limiters[backend] = l
	}
	return l
}
