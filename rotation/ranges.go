package rotation

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
)

// A large re-wrap is shared by every worker of a store (issue 9): the
// worker holding the key's lease splits the DEKs not yet on the target
// version into id ranges (rekey.RangeSharer.SplitRewrap), and any worker
// then claims a range by acquiring its lease (rekey.RangeLeaseKey) and
// re-wraps it batch by batch, each batch written with the range's
// checkpoint in one transaction fenced by that lease
// (CommitRangeBatch). A worker that dies leaves its range's lease to
// expire (or to be broken at once when its process is provably gone, as
// for key leases); whoever acquires it next resumes at the range's cursor
// with a higher epoch, so the old holder can write nothing more. Once
// every range is finished, the key's holder carries on as without ranges:
// a pass after the last range's cursor, commit, the final sweep.

// rangeSharer returns the store's range operations, if it has them.
func (e *Engine) rangeSharer() (rekey.RangeSharer, bool) {
	if e.deks != rekey.DEKSource(e.store) {
		return nil, false // DEKs elsewhere: ranges would fence the wrong table
	}
	return e.store, true
}

// rangeSize is how many DEKs one range of a re-wrap of total DEKs holds, or
// 0 when the re-wrap is not worth splitting.
func (e *Engine) rangeSize(total int64) int {
	size := int64(e.cfg.RangeSize)
	if size < 0 {
		return 0
	}
	if size == 0 {
		size = max(2*int64(e.cfg.BatchSize), (total+63)/64)
	}
	if total < 2*size {
		return 0
	}
	return int(size)
}

// shareRewrap splits the rotation's re-wrap into ranges (once; not when a
// plain pass has begun) and works ranges until every one is finished,
// waiting for those other workers hold. It leaves d.r as the store has it
// (the ranges' work counted) with the cursor after the last range, for the
// plain pass that follows.
func (d *driver) shareRewrap(ctx context.Context) error {
	e := d.e
	rs, ok := e.rangeSharer()
	if !ok {
		return nil
	}
	ranges, err := rs.ListRewrapRanges(ctx, d.r.ID)
	if err != nil {
		return fmt.Errorf("rotation %s of key %s: list re-wrap ranges: %w", d.r.ID, d.r.Key, err)
	}
	if len(ranges) == 0 {
		if d.r.Cursor != "" {
			return nil // a plain pass began before: it finishes alone
		}
		if ranges, err = d.split(ctx, rs); err != nil || len(ranges) == 0 {
			return err
		}
	}
	wait := min(max(e.cfg.LeaseTTL/10, 10*time.Millisecond), time.Second)
	for !allFinished(ranges) {
		if _, err := e.workRanges(ctx, d.key, d.b, d.r, ranges); err != nil {
			return err
		}
		if ranges, err = rs.ListRewrapRanges(ctx, d.r.ID); err != nil {
			return fmt.Errorf("rotation %s of key %s: list re-wrap ranges: %w", d.r.ID, d.r.Key, err)
		}
		if allFinished(ranges) {
			break
		}
		// Other workers hold the rest: wait for them, or for their leases
		// to expire.
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(wait):
		}
	}
	got, err := e.store.GetRotation(ctx, d.r.ID)
	if err != nil {
		return fmt.Errorf("rotation %s of key %s: read it back after its ranges: %w", d.r.ID, d.r.Key, err)
	}
	if got.State != rekey.RotationRewrapping {
		return fmt.Errorf("rotation %s of key %s is %s after its ranges: %w", d.r.ID, d.r.Key, got.State, rekey.ErrStale)
	}
	// The plain pass of rekey's own DEKs resumes after the last range of
	// them (not when a source pass began: its cursor names the source),
	// and each split source's pass after its last range.
	if !isSourceCursor(got.Cursor) {
		for _, rg := range ranges {
			if spanOf(rg).source == "" {
				got.Cursor = max(got.Cursor, rg.From, rg.Cursor)
			}
		}
	}
	d.srcAfter = sourceResume(ranges)
	d.r = got
	e.log.Info("shared re-wrap ranges finished", "key_id", d.key.Name, "rotation_id", d.r.ID, "ranges", len(ranges),
		"deks_rotated", d.r.Done, "deks_failed", d.r.Failed)
	return nil
}

// split divides the DEKs still to re-wrap into ranges and stores them. It
// returns no ranges when there are too few DEKs to share.
func (d *driver) split(ctx context.Context, rs rekey.RangeSharer) ([]rekey.RewrapRange, error) {
	e := d.e
	size := e.rangeSize(d.r.Total)
	if size == 0 {
		return nil, nil
	}
	bounds, err := rs.DEKBounds(ctx, d.key.Name, d.r.ToVersion, size)
	if err != nil {
		return nil, fmt.Errorf("rotation %s of key %s: range bounds: %w", d.r.ID, d.r.Key, err)
	}
	if n := len(bounds); n > 0 && int64(n)*int64(size) >= d.r.Total {
		// The last bound is the last DEK: no range after it but for DEKs
		// written meanwhile, which the last range takes anyway.
		bounds = bounds[:n-1]
	}
	// Then the sources' ranges (srcranges.go): after every id of rekey's
	// own DEKs.
	bounds = append(bounds, d.sourceBounds(ctx, bounds, size)...)
	if len(bounds) == 0 {
		return nil, nil
	}
	ev := e.rotationEvent(rekey.AuditRewrapProgress, d.r)
	ev.Status = string(rekey.RotationRewrapping)
	ev.Reason += fmt.Sprintf(" (re-wrap split into %d ranges of about %d DEKs)", len(bounds)+1, size)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	err = rs.SplitRewrap(wctx, d.r.ID, bounds, d.kl.fence(), ev)
	if err != nil && !errors.Is(err, rekey.ErrConflict) {
		// ErrConflict: an earlier try committed behind a transient error.
		return nil, fmt.Errorf("rotation %s of key %s: split re-wrap: %w", d.r.ID, d.r.Key, err)
	}
	ranges, err := rs.ListRewrapRanges(ctx, d.r.ID)
	if err != nil {
		return nil, fmt.Errorf("rotation %s of key %s: list re-wrap ranges: %w", d.r.ID, d.r.Key, err)
	}
	e.log.Info("re-wrap split into ranges for every worker to share", "key_id", d.key.Name, "rotation_id", d.r.ID,
		"ranges", len(ranges), "deks_per_range", size)
	return ranges, nil
}

func allFinished(ranges []rekey.RewrapRange) bool {
	for _, rg := range ranges {
		if !rg.Finished {
			return false
		}
	}
	return true
}

// ShareRewrap helps another worker's rotation of key: when its re-wrap was
// split into ranges, it re-wraps every range nobody holds, one at a time
// under the range's lease, and returns how many DEKs it re-wrapped. It
// does nothing when the key has no shared re-wrap in progress.
func (e *Engine) ShareRewrap(ctx context.Context, key string) (int64, error) {
	rs, ok := e.rangeSharer()
	if !ok {
		return 0, nil
	}
	open, err := e.openRotation(ctx, key)
	if err != nil || open == nil || open.State != rekey.RotationRewrapping {
		return 0, err
	}
	ranges, err := rs.ListRewrapRanges(ctx, open.ID)
	if err != nil {
		return 0, fmt.Errorf("rotation %s of key %s: list re-wrap ranges: %w", open.ID, key, err)
	}
	if allFinished(ranges) {
		return 0, nil
	}
	k, b, err := e.keyAndBackend(ctx, key)
	if err != nil {
		return 0, err
	}
	return e.workRanges(ctx, k, b, *open, ranges)
}

// workRanges re-wraps every unfinished range of r that it can lease and
// returns the DEKs it re-wrapped: those of rekey's own DEKs
// cfg.RangeWorkers at a time, then those of DEK sources one after the
// other. A range another worker holds is skipped; one taken over from us
// mid-way is left to its new holder, and stops the others of this call.
func (e *Engine) workRanges(ctx context.Context, k rekey.Key, b *backend, r rekey.Rotation, ranges []rekey.RewrapRange) (int64, error) {
	var own, sources []rekey.RewrapRange
	for _, rg := range ranges {
		switch {
		case rg.Finished:
		case spanOf(rg).source == "":
			own = append(own, rg)
		default:
			sources = append(sources, rg)
		}
	}
	total, err := e.workRangesAtOnce(ctx, k, b, r, own, len(ranges), e.cfg.RangeWorkers)
	if err != nil {
		return total, err
	}
	n, err := e.workRangesAtOnce(ctx, k, b, r, sources, len(ranges), 1)
	return total + n, err
}

// workRangesAtOnce works todo with up to workers goroutines, each range
// by one of them (a lease is re-entrant for its owner, so two must never
// share one), and returns the DEKs re-wrapped. The first error stops the
// others after their batch in progress and is returned.
func (e *Engine) workRangesAtOnce(ctx context.Context, k rekey.Key, b *backend, r rekey.Rotation, todo []rekey.RewrapRange, count, workers int) (int64, error) {
	var total atomic.Int64
	err := each(ctx, len(todo), workers, func(ctx context.Context, i int) error {
		n, err := e.workOneRange(ctx, k, b, r, todo[i], count)
		total.Add(n)
		return err
	})
	return total.Load(), err
}

// workOneRange re-wraps range rg under its lease and returns the DEKs it
// re-wrapped; a range another worker holds, or one found finished, is no
// error.
func (e *Engine) workOneRange(ctx context.Context, k rekey.Key, b *backend, r rekey.Rotation, rg rekey.RewrapRange, count int) (int64, error) {
	if src := spanOf(rg).source; src != "" {
		if _, _, ok := e.sourceNamed(k.Name, src); !ok {
			// Left to a worker that has the source (the one that split
			// the re-wrap has it).
			e.log.Warn("re-wrap range of a DEK source this worker does not have; left to the others: configure the same dek_sources on every replica",
				"key_id", k.Name, "rotation_id", r.ID, "range", rg.Index, "source", src)
			return 0, nil
		}
	}
	var n int64
	err := e.withLease(ctx, rg.LeaseKey(), true, func(ctx context.Context, kl *keyLease) error {
		var err error
		n, err = e.workRange(ctx, kl, k, b, r, rg.Index, count)
		return err
	})
	switch {
	case err == nil:
	case errors.Is(err, rekey.ErrLeaseHeld):
		// Another worker has it.
		return n, nil
	case isFenced(err):
		// Our lease on the range expired or was taken over: this
		// worker was paused or too slow. Stop sharing rather than
		// claim more: its view may be stale, and whoever took the
		// range over carries on.
		e.log.Warn("re-wrap range lost (lease expired or taken over); stopping work on this rotation", "key_id", k.Name,
			"rotation_id", r.ID, "range", rg.Index, "error", err)
		return n, err
	case errors.Is(err, rekey.ErrStale):
		// The range finished (an earlier try of ours committed) or
		// the rotation moved on: nothing left here.
		e.log.Info("re-wrap range already finished", "key_id", k.Name, "rotation_id", r.ID, "range", rg.Index)
		return n, nil
	}
	return n, err
}

// workRange re-wraps range index of r from its stored cursor until no DEK
// of the range is left off the target version, then marks it finished.
func (e *Engine) workRange(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, r rekey.Rotation, index, count int) (int64, error) {
	rs, _ := e.rangeSharer()
	// Read the range under its lease: a former holder may have moved it.
	ranges, err := rs.ListRewrapRanges(ctx, r.ID)
	if err != nil {
		return 0, fmt.Errorf("rotation %s of key %s: list re-wrap ranges: %w", r.ID, r.Key, err)
	}
	if index >= len(ranges) || ranges[index].Finished {
		return 0, nil
	}
	rg := ranges[index]
	if spanOf(rg).source != "" {
		return e.workSourceRange(ctx, kl, k, b, r, rg, count)
	}
	cursor := max(rg.Cursor, rg.From)
	e.log.Info("re-wrapping a range of a shared rotation", "key_id", k.Name, "rotation_id", r.ID,
		"range", index, "of", count, "from", cursor, "to", rg.To)
	var done int64
	query := func(after string) rekey.DEKQuery {
		return rekey.DEKQuery{Key: k.Name, NotVersion: r.ToVersion, After: after, Limit: e.cfg.BatchSize, Brief: true}
	}
	var ahead *readAhead
	defer func() { ahead.stop() }()
	for {
		if err := ctx.Err(); err != nil {
			return done, context.Cause(ctx)
		}
		p, err := e.list(ctx, ahead, query(cursor))
		ahead = nil
		if err != nil {
			return done, err
		}
		deks := p.deks
		end := len(deks) < e.cfg.BatchSize
		if to := spanOf(rg).to; to != "" {
			for i, dk := range deks {
				if dk.ID > to {
					deks, end = deks[:i], true
					break
				}
			}
		}
		ck := &rangeCheckpoint{e: e, rs: rs, kl: kl, r: r, index: index, count: count, from: cursor, cursor: cursor}
		if len(deks) > 0 {
			ck.cursor = deks[len(deks)-1].ID
			if !end {
				ahead = e.listAhead(ctx, query(ck.cursor), spanOf(rg).to, b, r.ToVersion)
			}
			p.deks = deks // cut at the range's end: p.outs, when set, came from a read-ahead cut there already
			if p.outs != nil {
				p.outs = p.outs[:len(deks)]
			}
			res, err := e.rewrapPrepared(ctx, kl, b, p, r.ToVersion, ck, ahead)
			done += res.done
			if err != nil {
				return done, err
			}
			cursor = ck.cursor
			if err := e.hit(failpoint.RewrapAfterBatchCommit); err != nil {
				return done, err
			}
		}
		if end {
			return done, ck.finish(ctx)
		}
	}
}

// rangeCheckpoint records one batch of a range (checkpointer).
type rangeCheckpoint struct {
	e      *Engine
	rs     rekey.RangeSharer
	kl     *keyLease
	r      rekey.Rotation
	index  int
	count  int
	from   string // the cursor before this batch
	cursor string // the cursor after it
}

func (c *rangeCheckpoint) oneTx() bool { return true }

func (c *rangeCheckpoint) stay() checkpointer {
	s := *c
	s.cursor = c.from
	return &s
}

func (c *rangeCheckpoint) advance(context.Context, int64, []string) error {
	return errors.New("rotation: a range checkpoint is written with its swaps") // oneTx is true
}

func (c *rangeCheckpoint) event(done int64, finished bool) rekey.AuditEvent {
	ev := c.e.rotationEvent(rekey.AuditRewrapProgress, c.r)
	ev.DEKs = done // the store adds the swaps it applies
	ev.Status = string(rekey.RotationRewrapping)
	if finished {
		ev.Reason += fmt.Sprintf(" (range %d of %d finished)", c.index+1, c.count)
	} else {
		ev.Reason += fmt.Sprintf(" (range %d of %d)", c.index+1, c.count)
	}
	return ev
}

func (c *rangeCheckpoint) commitBatch(ctx context.Context, swaps []rekey.DEKSwap, done int64, failed []string) ([]string, error) {
	ev := c.event(done, false)
	if len(failed) > 0 {
		ev.Error = fmt.Sprintf("%d DEK(s) in this batch could not be unwrapped", len(failed))
	}
	lost, err := c.rs.CommitRangeBatch(ctx, swaps, c.kl.fence(), rekey.RangeCheckpoint{
		RotationID: c.r.ID, Index: c.index, Cursor: c.cursor, Done: done, FailedIDs: failed,
		Events: []rekey.AuditEvent{ev}, Now: c.e.now(),
	})
	if err != nil {
		return nil, fmt.Errorf("rotation %s of key %s: write %d DEKs of range %d: %w", c.r.ID, c.r.Key, len(swaps), c.index, err)
	}
	if n := done + int64(len(swaps)-len(lost)); n > 0 {
		c.e.obs.DEKsRewrapped(c.r.Key, int(n))
	}
	c.e.log.Debug("re-wrap batch committed", "key_id", c.r.Key, "rotation_id", c.r.ID, "to_version", c.r.ToVersion,
		"range", c.index, "deks", len(swaps)-len(lost), "deks_failed", len(failed))
	return lost, nil
}

// finish marks the range finished (a write of its own, with no swaps).
func (c *rangeCheckpoint) finish(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	_, err := c.rs.CommitRangeBatch(wctx, nil, c.kl.fence(), rekey.RangeCheckpoint{
		RotationID: c.r.ID, Index: c.index, Cursor: c.cursor, Finished: true,
		Events: []rekey.AuditEvent{c.event(0, true)}, Now: c.e.now(),
	})
	if err != nil && errors.Is(err, rekey.ErrStale) {
		// An earlier try committed behind a transient error, or the
		// range was finished: either way it is.
		return nil
	}
	if err != nil {
		return fmt.Errorf("rotation %s of key %s: finish range %d: %w", c.r.ID, c.r.Key, c.index, err)
	}
	c.e.log.Info("re-wrap range finished", "key_id", c.r.Key, "rotation_id", c.r.ID, "range", c.index)
	return nil
}
