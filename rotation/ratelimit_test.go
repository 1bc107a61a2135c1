package rotation

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestRateLimiterSpacesCalls: n calls from several goroutines through a
// limiter of r per second take at least (n-1)/r; a nil limiter never waits;
// a cancelled context stops the wait.
func TestRateLimiterSpacesCalls(t *testing.T) {
	t.Parallel()
	l := newRateLimiter(200) // every 5ms
	const n = 21
	start := time.Now()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.wait(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// A lower bound only: the machine may be slow, never faster than the
	// limit allows.
	if took := time.Since(start); took < (n-1)*5*time.Millisecond {
		t.Fatalf("%d calls at 200/s took %v, want at least %v", n, took, (n-1)*5*time.Millisecond)
	}
	if newRateLimiter(0) != nil {
		t.Fatal("a limit of 0 made a limiter")
	}
	var none *rateLimiter
	if err := none.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	slow := newRateLimiter(0.001) // one call per 1000 s
	ctx, cancel := context.WithCancel(context.Background())
	if err := slow.wait(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := slow.wait(ctx); err == nil {
		t.Fatal("wait ignored a cancelled context")
	}
}
