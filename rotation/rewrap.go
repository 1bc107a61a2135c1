package rotation

import (
	"context"
	"errors"
	"fmt"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
)

// maxLostRounds bounds how often one batch re-reads and retries DEKs whose
// compare-and-swap lost; what is still lost after that is left for the next
// sweep (which re-lists it), never overwritten.
const maxLostRounds = 3

// batchResult is what one re-wrap batch achieved.
type batchResult struct {
	done   int64    // DEKs now on the target version
	failed []string // DEKs that could not be unwrapped: skipped, unchanged
	left   int      // DEKs whose swap kept losing: left for the next sweep
}

// checkpointer records the progress of re-wrap batches: a rotation's own
// pass (batchCheckpoint) or one range of a shared re-wrap (rangeCheckpoint).
type checkpointer interface {
	// oneTx reports whether commitBatch writes the swaps with the
	// checkpoint in one transaction; otherwise the swaps are written
	// (SwapDEKs) and then advance records the checkpoint.
	oneTx() bool
	// commitBatch writes swaps and the checkpoint in one transaction;
	// done counts DEKs found already on the target version, failed the
	// DEKs that cannot be unwrapped. It returns the ids of swaps that lost.
	commitBatch(ctx context.Context, swaps []rekey.DEKSwap, done int64, failed []string) ([]string, error)
	// advance records the checkpoint alone (when !oneTx).
	advance(ctx context.Context, done int64, failed []string) error
	// stay returns the same checkpoint without moving the cursor (for a
	// batch that only partly finished).
	stay() checkpointer
}

// rewrapOut is the backend's answer for one DEK: the new wrapped bytes, or
// the reason the DEK cannot be unwrapped.
type rewrapOut struct {
	wrapped []byte
	err     error
}

// take records one DEK's re-wrap: its new bytes, or an error of the DEK's
// own (isDEKFailure: the DEK is skipped). Any other error is returned, for
// the caller to fail the batch with.
func (o *rewrapOut) take(w []byte, err error) error {
	switch {
	case err == nil:
		o.wrapped = w
	case isDEKFailure(err):
		o.err = err
	default:
		return err
	}
	return nil
}

// rewrapBatch re-wraps deks (all of one key) under version to and writes
// them with one compare-and-swap per batch, fenced by the lease (rule 3).
// Backend work runs on ctx: a stop abandons the batch before anything is
// written. Once the backend part is done, the writes run to completion on a
// context of their own, so a batch is never half-written by a stop.
//
// With ck (a rotation's batch) the batch is checkpointed: when the DEK
// source is a rekey.BatchCommitter (the store), each write of swaps is one
// CommitBatch carrying the checkpoint, so the checkpoint can never fall
// behind the DEKs; otherwise the swaps are written (SwapDEKs) and then the
// checkpoint (AdvanceRotation). Without ck (a retirement sweep) only the
// swaps are written.
//
// A DEK that cannot be unwrapped (rule 6) is reported, skipped and left
// unchanged. A swap that lost (the row changed meanwhile) is re-read and
// re-wrapped from the row's current value, never overwritten; each such
// round is its own write with the same cursor. The returned error is fatal
// for the batch: a backend error that is not about one DEK, ErrFenced, or
// a store failure (the middleware already retried transient ones).
func (e *Engine) rewrapBatch(ctx context.Context, kl *keyLease, b *backend, deks []rekey.DEK, to int, ck checkpointer) (batchResult, error) {
	return e.rewrapPrepared(ctx, kl, b, prepared{deks: deks}, to, ck, nil)
}

// rewrapPrepared is rewrapBatch for a batch read ahead (readAhead): the
// backend's answers p.outs are used when present, else the batch is
// re-wrapped now; next (may be nil) is the batch after it, whose backend
// stage is let run once this one's is done.
func (e *Engine) rewrapPrepared(ctx context.Context, kl *keyLease, b *backend, p prepared, to int, ck checkpointer, next *readAhead) (batchResult, error) {
	var res batchResult
	deks := p.deks
	if len(deks) == 0 {
		next.goRewrap()
		return res, nil
	}
	outs := p.outs
	if outs == nil {
		var err error
		if outs, err = e.rewrapAtBackend(ctx, b, deks, to); err != nil {
			e.keepPartial(ctx, kl, b, deks, outs, to, ck, err)
			return res, err
		}
	}
	next.goRewrap()
	if err := e.hit(failpoint.RewrapAfterBackend); err != nil {
		return res, err
	}
	return e.writeBatch(ctx, kl, b, deks, outs, to, ck)
}

// keepPartial writes what a batch re-wrapped before a transient backend
// failure ended it (cause), so that the work is not lost: the DEKs whose
// re-wrap succeeded are swapped, fenced, with a checkpoint that leaves the
// cursor where it was, so the next try lists only the rest (a DEK on the
// target version is no longer listed). Without it, a backend that fails one
// call in every batch once its retries are spent (throttling under the
// re-wrap's own load) would make the rotation redo the same batch forever.
// DEKs that cannot be unwrapped are left for the next try to count. A
// failure of this write is logged only: the batch fails with cause anyway.
func (e *Engine) keepPartial(ctx context.Context, kl *keyLease, b *backend, deks []rekey.DEK, outs []rewrapOut, to int, ck checkpointer, cause error) {
	if outs == nil || !rekey.IsTransient(cause) || ctx.Err() != nil {
		return
	}
	var (
		done     []rekey.DEK
		doneOuts []rewrapOut
	)
	for i := range deks {
		if outs[i].err == nil && outs[i].wrapped != nil {
			done = append(done, deks[i])
			doneOuts = append(doneOuts, outs[i])
		}
	}
	if len(done) == 0 {
		return
	}
	var pck checkpointer
	if ck != nil {
		pck = ck.stay()
	}
	res, err := e.writeBatch(ctx, kl, b, done, doneOuts, to, pck)
	if err != nil {
		e.log.Warn("writing the DEKs re-wrapped before a backend failure failed; the next try re-wraps them again",
			"key_id", deks[0].Key, "deks", len(done), "error", err)
		return
	}
	e.log.Info("batch ended by a backend failure; kept the DEKs re-wrapped before it",
		"key_id", deks[0].Key, "deks", res.done, "of", len(deks), "error", cause)
}

// writeBatch is rewrapBatch's write half: it swaps deks to the re-wrapped
// bytes in outs (and checkpoints with ck), re-reading and re-wrapping the
// DEKs whose swap lost.
func (e *Engine) writeBatch(ctx context.Context, kl *keyLease, b *backend, deks []rekey.DEK, outs []rewrapOut, to int, ck checkpointer) (batchResult, error) {
	var (
		res batchResult
		err error
	)
	key := deks[0].Key
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	var (
		swaps     = make([]rekey.DEKSwap, 0, len(deks))
		newFailed []string // not yet in a checkpoint
		onTarget  int64    // found already on to, not yet in a checkpoint
	)
	collect := func(deks []rekey.DEK, outs []rewrapOut) {
		for i, d := range deks {
			if err := outs[i].err; err != nil {
				res.failed = append(res.failed, d.ID)
				newFailed = append(newFailed, d.ID)
				e.log.Warn("DEK cannot be unwrapped; skipped and left unchanged", "key_id", key, "dek_id", d.ID, "version", d.Version, "error", err)
				continue
			}
			swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: outs[i].wrapped, NewVersion: to, OldVersion: d.Version})
		}
	}
	collect(deks, outs)

	oneTx := ck != nil && ck.oneTx()
	getter, canGet := e.deks.(dekGetter)
	for round := 0; ; round++ {
		var lost []string
		switch {
		case oneTx:
			lost, err = ck.commitBatch(wctx, swaps, onTarget, newFailed)
		case len(swaps) > 0:
			lost, err = e.swapDEKs(wctx, kl, swaps)
		}
		if err != nil {
			return res, err
		}
		res.done += onTarget + int64(len(swaps)-len(lost))
		onTarget, newFailed = 0, nil
		swaps = swaps[:0]
		if len(lost) == 0 {
			break
		}
		if !canGet || round >= maxLostRounds || ctx.Err() != nil {
			res.left += len(lost)
			e.log.Warn("DEKs changed during re-wrap; left for the next sweep", "key_id", key, "deks", len(lost))
			break
		}
		e.log.Info("DEKs changed during re-wrap; re-reading them", "key_id", key, "deks", len(lost))
		var again []rekey.DEK
		for _, id := range lost {
			fresh, err := getter.GetDEK(wctx, id)
			switch {
			case errors.Is(err, rekey.ErrDEKNotFound):
				continue // deleted meanwhile: nothing to re-wrap
			case err != nil:
				return res, fmt.Errorf("re-read dek %s: %w", id, err)
			case fresh.Key != key:
				continue
			case fresh.Version == to:
				// Already on the target: an earlier try of our own write
				// committed behind a transient error (the store middleware
				// retried it), or another worker's.
				onTarget++
				continue
			}
			again = append(again, fresh)
		}
		if len(again) > 0 {
			outs, err := e.rewrapAtBackend(ctx, b, again, to)
			if err != nil {
				res.left += len(again)
				e.log.Warn("re-wrapping changed DEKs failed; left for the next sweep", "key_id", key, "deks", len(again), "error", err)
			} else {
				collect(again, outs)
			}
		}
		if len(swaps) == 0 && onTarget == 0 && len(newFailed) == 0 {
			break
		}
	}
	if ck != nil && !oneTx {
		if err := ck.advance(ctx, res.done, res.failed); err != nil {
			return res, err
		}
	}
	return res, nil
}

func (e *Engine) swapDEKs(ctx context.Context, kl *keyLease, swaps []rekey.DEKSwap) ([]string, error) {
	lost, err := e.deks.SwapDEKs(ctx, swaps, kl.fence())
	if err != nil {
		return nil, fmt.Errorf("swap %d DEKs: %w", len(swaps), err)
	}
	return lost, nil
}

// rewrapAtBackend re-wraps deks under version to with at most Concurrency
// backend calls in flight for the whole engine (its calls slots, shared by
// range workers and read-ahead): one RewrapBatch per chunk when the
// backend has it, else one Rewrap per DEK, else Unwrap then Wrap. The
// first fatal error stops the other workers; outs then holds what was done
// before it (an entry with neither wrapped nor err was not done).
func (e *Engine) rewrapAtBackend(ctx context.Context, b *backend, deks []rekey.DEK, to int) ([]rewrapOut, error) {
	outs := make([]rewrapOut, len(deks))
	var err error
	if dst, versions, ok := b.batchPlan(ctx, deks, to); ok {
		size := (len(deks) + e.cfg.Concurrency - 1) / e.cfg.Concurrency
		chunks := (len(deks) + size - 1) / size
		err = each(ctx, chunks, chunks, func(ctx context.Context, c int) error {
			lo, hi := c*size, min((c+1)*size, len(deks))
			if !e.takeCall(ctx) {
				return nil
			}
			defer e.giveCall()
			return e.rewrapChunk(ctx, dst, deks[lo:hi], versions[lo:hi], outs[lo:hi])
		})
	} else {
		err = each(ctx, len(deks), e.cfg.Concurrency, func(ctx context.Context, i int) error {
			if !e.takeCall(ctx) {
				return nil
			}
			w, err := e.rewrapOne(ctx, b, deks[i], to)
			e.giveCall()
			if err := outs[i].take(w, err); err != nil {
				return fmt.Errorf("re-wrap dek %s: %w", deks[i].ID, err)
			}
			return nil
		})
	}
	// On an error, outs holds what was done before it: see keepPartial.
	return outs, err
}

// takeCall waits for one of the engine's Concurrency call slots; it
// returns false, holding none, when ctx ends first.
func (e *Engine) takeCall(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case e.calls <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// giveCall gives back a slot taken by takeCall.
func (e *Engine) giveCall() { <-e.calls }

// rewrapOne re-wraps one DEK: on the server side when its version and
// to live on the same backend and that backend can, else by an unwrap on
// its version's backend and a wrap on to's (a move). The plaintext exists
// only on the unwrap+wrap path and is zeroed right after use (best effort:
// Go may have copied it).
func (e *Engine) rewrapOne(ctx context.Context, b *backend, d rekey.DEK, to int) ([]byte, error) {
	dst, err := b.at(ctx, to)
	if err != nil {
		return nil, &wrapFailure{version: to, err: err}
	}
	src, err := b.at(ctx, d.Version)
	if err != nil {
		return nil, err
	}
	if src.b == dst.b && src.b.rewrapper != nil {
		return src.b.rewrapper.Rewrap(ctx, src.b.ref, src.version, d.Wrapped, dst.version)
	}
	pt, err := src.b.kms.Unwrap(ctx, src.b.ref, src.version, d.Wrapped)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	out, err := dst.b.kms.Wrap(ctx, dst.b.ref, dst.version, pt)
	if err != nil {
		return nil, &wrapFailure{version: to, err: err}
	}
	return out, nil
}

// rewrapChunk re-wraps deks in one RewrapBatch call at dst's backend,
// which holds every DEK's version too (versions: their numbers there). An
// item that failed transiently fails the chunk (and the batch): the
// middleware retries calls, not items, and the next cycle takes the batch
// again.
func (e *Engine) rewrapChunk(ctx context.Context, dst place, deks []rekey.DEK, versions []int, outs []rewrapOut) error {
	items := make([]rekey.RewrapItem, len(deks))
	for i, d := range deks {
		items[i] = rekey.RewrapItem{Version: versions[i], Wrapped: d.Wrapped}
	}
	results, err := dst.b.batch.RewrapBatch(ctx, dst.b.ref, dst.version, items)
	if err != nil {
		return fmt.Errorf("re-wrap batch of %d DEKs: %w", len(deks), err)
	}
	if len(results) != len(items) {
		return fmt.Errorf("re-wrap batch of %d DEKs: backend %s returned %d results", len(deks), dst.b.name, len(results))
	}
	for i, r := range results {
		switch {
		case r.Err == nil:
			outs[i].wrapped = r.Wrapped
		case isDEKFailure(r.Err):
			outs[i].err = r.Err
		default:
			return fmt.Errorf("re-wrap dek %s: %w", deks[i].ID, r.Err)
		}
	}
	return nil
}

// wrapFailure marks an error of the wrap half of a re-wrap: it is about the
// target version, never about one DEK, so it fails the batch.
type wrapFailure struct {
	version int
	err     error
}

func (w *wrapFailure) Error() string {
	return fmt.Sprintf("wrap under version %d: %v", w.version, w.err)
}
func (w *wrapFailure) Unwrap() error { return w.err }

// isDEKFailure reports whether err means this one DEK cannot be unwrapped
// (corrupt, truncated, made under another key or version, or its version is
// gone or disabled): rule 6 skips and reports it.
func isDEKFailure(err error) bool {
	var wf *wrapFailure
	if errors.As(err, &wf) {
		return false
	}
	return errors.Is(err, rekey.ErrInvalidCiphertext) || errors.Is(err, rekey.ErrWrongVersion) ||
		errors.Is(err, rekey.ErrVersionNotFound) || errors.Is(err, rekey.ErrVersionDisabled)
}
