package bench

import (
	"sync"
	"sync/atomic"
	"time"
)

// timedPool calls fn(i) for every i in [0, n), workers at a time, reports
// progress under label every progressEvery calls, and returns the calls
// per second over the whole run. The first error stops every worker (the
// calls running finish) and is returned.
func (e *runEnv) timedPool(label string, workers, n, progressEvery int, fn func(i int) error) (float64, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	start := time.Now()
	for range max(workers, 1) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if i%progressEvery == 0 {
					e.o.Progress(label, i, n)
				}
				if err := fn(i); err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(int64(n)) // the others stop at their next call
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if firstErr != nil {
		return 0, firstErr
	}
	e.o.Progress(label, n, n)
	return float64(n) / took.Seconds(), nil
}
