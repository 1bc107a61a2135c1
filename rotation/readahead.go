package rotation

import (
	"context"

	"github.com/rekeyhq/rekey"
)

// readAhead prepares the next batch of a re-wrap while the current one is
// re-wrapped and written. It lists the batch at once (a read, on another
// connection of the store than its writer), and re-wraps it at the backend
// once the current batch's own backend work is done (goRewrap), so that it
// overlaps the current batch's transaction and never adds to the calls in
// flight. It changes nothing a crash can see: nothing is written until the
// batch's turn, and then with its checkpoint as before; a row changed by
// a writer after it was read ahead loses its swap (compare-and-swap) and
// is read and re-wrapped again, as a row read just before would.
type readAhead struct {
	q      rekey.DEKQuery
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine ends
	deks   []rekey.DEK
	err    error // of the list

	start chan struct{} // closed by goRewrap: the backend stage may run
	outs  []rewrapOut   // the backend's answers, when rewrapped
	rerr  error         // of the backend stage
	ready bool          // the backend stage ran (outs, rerr are set)
}

// listAhead starts listing q in the background, keeping the ids up to
// upTo (all when empty: a range's end), and re-wrapping them under version
// to on b once goRewrap is called (never, for b nil).
func (e *Engine) listAhead(ctx context.Context, q rekey.DEKQuery, upTo string, b *backend, to int) *readAhead {
	ctx, cancel := context.WithCancel(ctx)
	ra := &readAhead{q: q, cancel: cancel, done: make(chan struct{}), start: make(chan struct{})}
	go func() {
		defer close(ra.done)
		ra.deks, ra.err = e.listDEKs(ctx, q)
		if upTo != "" {
			for i, d := range ra.deks {
				if d.ID > upTo {
					ra.deks = ra.deks[:i] // the next range's: not re-wrapped here
					break
				}
			}
		}
		if ra.err != nil || len(ra.deks) == 0 || b == nil {
			return
		}
		select {
		case <-ra.start:
		case <-ctx.Done():
			return
		}
		ra.outs, ra.rerr = e.rewrapAtBackend(ctx, b, ra.deks, to)
		ra.ready = true
	}()
	return ra
}

// goRewrap lets ra's backend stage run; a nil ra is a no-op. Calling it
// twice is a no-op too.
func (ra *readAhead) goRewrap() {
	if ra == nil {
		return
	}
	select {
	case <-ra.start:
	default:
		close(ra.start)
	}
}

// prepared is a batch read (and maybe re-wrapped) ahead.
type prepared struct {
	deks []rekey.DEK
	outs []rewrapOut // nil: not re-wrapped (or its re-wrap failed): do it now
}

// list returns the batch of q: the one read ahead when ra (which may be
// nil) listed the same query, with its backend answers when they came
// without an error, else a list made now. ra is stopped either way.
func (e *Engine) list(ctx context.Context, ra *readAhead, q rekey.DEKQuery) (prepared, error) {
	if ra != nil && ra.q != q {
		ra.stop() // read ahead for another cursor: not used
	} else if ra != nil {
		ra.goRewrap() // nothing else runs at the backend now
		<-ra.done
		ra.cancel()
		if ctx.Err() == nil && ra.err == nil {
			p := prepared{deks: ra.deks}
			if ra.ready && ra.rerr == nil {
				p.outs = ra.outs
			}
			return p, nil
		}
	}
	deks, err := e.listDEKs(ctx, q)
	return prepared{deks: deks}, err
}

// stop cancels ra's work and waits for it; a nil ra is a no-op.
func (ra *readAhead) stop() {
	if ra != nil {
		ra.cancel()
		<-ra.done
	}
}
