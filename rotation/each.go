package rotation

import (
	"context"
	"sync"
	"sync/atomic"
)

// each calls fn(ctx, i) for every i in [0, n), at most workers at a time,
// every i once. The first error fn returns cancels the ctx the others get
// (the calls running finish, no new one starts) and is returned; a ctx
// that ends first ends the loop too, and its cause is returned.
func each(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(max(workers, 1), n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}
