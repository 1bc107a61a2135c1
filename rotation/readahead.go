package rotation

import (
	"context"

	"github.com/rekeyhq/rekey"
)

// readAhead lists the next batch of a re-wrap while the current one is
// re-wrapped and written: the list is a read (another connection of the
// store than its writer), so it overlaps the batch's backend calls and its
// transaction instead of following them. It changes nothing a crash can
// see: the checkpoint is still written with the batch it describes, and a
// row read ahead that a writer changes meanwhile loses its swap (the
// compare-and-swap) and is read again, as a row read just before would.
type readAhead struct {
	q      rekey.DEKQuery
	cancel context.CancelFunc
	done   chan struct{}
	deks   []rekey.DEK
	err    error
}

// listAhead starts listing q in the background.
func (e *Engine) listAhead(ctx context.Context, q rekey.DEKQuery) *readAhead {
	ctx, cancel := context.WithCancel(ctx)
	ra := &readAhead{q: q, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ra.done)
		ra.deks, ra.err = e.listDEKs(ctx, q)
	}()
	return ra
}

// list returns the DEKs of q: those read ahead when ra (which may be nil)
// listed the same query, else a list made now. ra is stopped either way.
func (e *Engine) list(ctx context.Context, ra *readAhead, q rekey.DEKQuery) ([]rekey.DEK, error) {
	if ra != nil {
		<-ra.done
		ra.cancel()
		if ra.q == q && ctx.Err() == nil {
			return ra.deks, ra.err
		}
	}
	return e.listDEKs(ctx, q)
}

// stop cancels ra's list and waits for it; a nil ra is a no-op.
func (ra *readAhead) stop() {
	if ra != nil {
		ra.cancel()
		<-ra.done
	}
}
