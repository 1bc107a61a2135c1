package rotation

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
)

// DEK sources (issue 11): a key's DEKs live in rekey's store AND in every
// application table (Config.Sources) that holds rows of that key. The
// engine treats each source as it treats its own DEKs:
//   - counts (countDEKs) add every source's rows per version, so the
//     rotation's total, the plan, the retirement decision (rule 5) and the
//     compromised-version gate see them;
//   - a rotation re-wraps each source after rekey's own DEKs, one pass per
//     source in configuration order, during the re-wrap and again in the
//     final sweep after commit; a source pass checkpoints its cursor in
//     the rotation row of rekey's store (Rotation.Cursor holds
//     sourceCursor(name, id)), never in the application's table;
//   - a retirement sweep re-wraps the rows left on the version, and the
//     version retires only when rekey's store and every source count zero
//     rows on it (counted again just before the backend is told);
//   - a row that does not unwrap is reported by source and id (log, the
//     rotation's failed DEKs as "source/id", status) and never written;
//   - a lost compare-and-swap (the application wrote meanwhile) is re-read
//     and re-wrapped from the new bytes, never overwritten.
//
// The application's database cannot share a transaction with rekey's
// store: a batch's swaps commit first, then its checkpoint. A crash
// between them re-lists the batch, whose rows are on the target version
// already and are not listed again (the pass lists rows not on it), so
// nothing is re-wrapped twice and Done may undercount by one batch.

// Source is a table of the application's own database holding wrapped DEKs.
type Source struct {
	// Name identifies the source in logs, failed-DEK ids and counts.
	Name string
	// DEKs reads and swaps the source's rows. If it has a
	// Holds(key string) bool method, the source is consulted only for the
	// keys it holds; with a GetDEK(ctx, id) method a lost swap is re-read
	// at once, else left to the next pass.
	DEKs rekey.DEKSource
	// Native says the wrapped column holds the backend's own ciphertexts
	// made outside rekey (see native.go): re-wrapped through
	// rekey.NativeRewrapper, whatever the version column says.
	Native bool
	// Format names the source's format in messages (e.g. "aws-native").
	Format string
	// EncryptionContext is the encryption context of a native source's
	// ciphertexts (nil: none); the re-wrap keeps it.
	EncryptionContext map[string]string
}

// SourceCount is how many rows of one key a source holds per version.
type SourceCount struct {
	Source   string        `json:"source"`
	Versions map[int]int64 `json:"deks_by_version"`
	Error    string        `json:"error,omitempty"`
}

// sourceHolder is the optional key filter of a source.
type sourceHolder interface{ Holds(key string) bool }

// sourcesFor returns the sources that may hold rows of key.
func (e *Engine) sourcesFor(key string) []Source {
	var out []Source
	for _, s := range e.cfg.Sources {
		if h, ok := s.DEKs.(sourceHolder); ok && !h.Holds(key) {
			continue
		}
		out = append(out, s)
	}
	return out
}

// addSourceCounts adds every source's rows of key per version to c.
func (e *Engine) addSourceCounts(ctx context.Context, key string, c map[int]int64) error {
	for _, s := range e.sourcesFor(key) {
		sc, err := s.DEKs.CountDEKs(ctx, key)
		if err != nil {
			return fmt.Errorf("count DEKs of key %s in source %s: %w", key, s.Name, err)
		}
		for v, n := range sc {
			c[v] += n
		}
	}
	return nil
}

// SourceCounts returns, for each source that may hold rows of key, its
// rows per version; a source that cannot be counted carries the error
// instead (the others are still counted).
func (e *Engine) SourceCounts(ctx context.Context, key string) []SourceCount {
	var out []SourceCount
	for _, s := range e.sourcesFor(key) {
		sc := SourceCount{Source: s.Name}
		c, err := s.DEKs.CountDEKs(ctx, key)
		if err != nil {
			sc.Error = err.Error()
		} else {
			sc.Versions = c
		}
		out = append(out, sc)
	}
	return out
}

// sourceRowsOn counts the rows of key in every source that keep version
// from retiring: those on it and those whose version is unknown.
func (e *Engine) sourceRowsOn(ctx context.Context, key string, version int) (int64, error) {
	c := map[int]int64{}
	if err := e.addSourceCounts(ctx, key, c); err != nil {
		return 0, err
	}
	return dependents(c, version), nil
}

// A source cursor in Rotation.Cursor: a separator byte no DEK id of
// rekey's store holds, the source's name, the separator, the last id.
const sourceCursorSep = "\x1f"

func sourceCursor(name, id string) string {
	return sourceCursorSep + "source" + sourceCursorSep + name + sourceCursorSep + id
}

// isSourceCursor reports whether a rotation's cursor is in a source pass
// (rekey's own DEKs are then done).
func isSourceCursor(c string) bool {
	return strings.HasPrefix(c, sourceCursorSep+"source"+sourceCursorSep)
}

func parseSourceCursor(c string) (name, id string, ok bool) {
	if !isSourceCursor(c) {
		return "", "", false
	}
	rest := strings.TrimPrefix(c, sourceCursorSep+"source"+sourceCursorSep)
	name, id, ok = strings.Cut(rest, sourceCursorSep)
	return name, id, ok
}

// sourcePasses re-wraps the key's rows in every source that are not on
// to_version, resuming at the rotation's source cursor, one checkpoint
// per batch.
func (d *driver) sourcePasses(ctx context.Context, state rekey.RotationState) error {
	srcs := d.e.sourcesFor(d.key.Name)
	if len(srcs) == 0 {
		return nil
	}
	start, cursor := 0, ""
	if name, id, ok := parseSourceCursor(d.r.Cursor); ok {
		for i, s := range srcs {
			if s.Name == name {
				start, cursor = i, id
			}
		}
	}
	for _, s := range srcs[start:] {
		if err := d.sourcePass(ctx, state, s, cursor); err != nil {
			return err
		}
		cursor = ""
	}
	return nil
}

func (d *driver) sourcePass(ctx context.Context, state rekey.RotationState, s Source, cursor string) error {
	e := d.e
	var moved, failed int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		deks, err := s.DEKs.ListDEKs(ctx, rekey.DEKQuery{Key: d.key.Name, NotVersion: d.r.ToVersion, After: cursor, Limit: e.cfg.BatchSize})
		if err != nil {
			return fmt.Errorf("list DEKs of key %s in source %s: %w", d.key.Name, s.Name, err)
		}
		if len(deks) == 0 {
			e.log.Info("source re-wrap pass done", "key_id", d.key.Name, "rotation_id", d.r.ID, "source", s.Name, "state", state,
				"to_version", d.r.ToVersion, "deks_rotated", moved, "deks_failed", failed)
			return nil
		}
		res, err := e.rewrapSourceBatch(ctx, d.kl, d.b, s, deks, d.r.ToVersion)
		if err != nil {
			return err
		}
		cursor = deks[len(deks)-1].ID
		ck := &batchCheckpoint{d: d, state: state, cursor: sourceCursor(s.Name, cursor), countFailed: true}
		if err := ck.advance(ctx, res.done, res.failed); err != nil {
			return err
		}
		moved += res.done
		failed += int64(len(res.failed))
		if err := e.hit(failpoint.RewrapAfterBatchCommit); err != nil {
			return err
		}
	}
}

// sweepSourcesVersion re-wraps every source row of k still on version
// under the active version (a retirement sweep), and returns how many moved.
func (e *Engine) sweepSourcesVersion(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, version int) (int64, error) {
	var moved int64
	for _, s := range e.sourcesFor(k.Name) {
		cursor := ""
		for {
			if err := ctx.Err(); err != nil {
				return moved, err
			}
			q := rekey.DEKQuery{Key: k.Name, Version: version, After: cursor, Limit: e.cfg.BatchSize}
			if s.Native {
				// A native row's version column may be NULL or stale:
				// every row off the active version may be on version.
				q.Version, q.NotVersion = 0, k.ActiveVersion
			}
			deks, err := s.DEKs.ListDEKs(ctx, q)
			if err != nil {
				return moved, fmt.Errorf("list DEKs of key %s in source %s: %w", k.Name, s.Name, err)
			}
			if len(deks) == 0 {
				break
			}
			res, err := e.rewrapSourceBatch(ctx, kl, b, s, deks, k.ActiveVersion)
			moved += res.done
			if res.done > 0 {
				e.obs.DEKsRewrapped(k.Name, int(res.done))
			}
			if err != nil {
				return moved, err
			}
			cursor = deks[len(deks)-1].ID
		}
	}
	if moved > 0 {
		e.log.Info("re-wrapped source rows left on an old version", "key_id", k.Name, "from_version", version, "to_version", k.ActiveVersion, "deks_rotated", moved)
	}
	return moved, nil
}

// rewrapSourceBatch re-wraps deks of source s under version to and swaps
// them in the source (compare-and-swap on the wrapped bytes). Rows that do
// not unwrap are reported as "source/id" in the result's failed ids and
// left unchanged; a lost swap is re-read (when the source can) and
// re-wrapped from the row's new bytes, up to maxLostRounds times, never
// overwritten. Before writing, the key's lease is confirmed in rekey's
// store: the application's database cannot check rekey's fence.
func (e *Engine) rewrapSourceBatch(ctx context.Context, kl *keyLease, b *backend, s Source, deks []rekey.DEK, to int) (batchResult, error) {
	var res batchResult
	key := deks[0].Key
	outs, err := e.rewrapSourceRows(ctx, b, s, deks, to)
	if err != nil {
		return res, fmt.Errorf("source %s: %w", s.Name, err)
	}
	if err := e.hit(failpoint.RewrapAfterBackend); err != nil {
		return res, err
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	l, err := e.store.RenewLease(wctx, kl.fence(), e.cfg.LeaseTTL, e.now())
	if err != nil {
		return res, fmt.Errorf("confirm lease before writing source %s: %w", s.Name, err)
	}
	kl.set(l)

	var swaps []rekey.DEKSwap
	collect := func(deks []rekey.DEK, outs []rewrapOut) {
		for i, d := range deks {
			if err := outs[i].err; err != nil {
				res.failed = append(res.failed, s.Name+"/"+d.ID)
				e.log.Warn("DEK in source cannot be unwrapped; skipped and left unchanged",
					"key_id", key, "source", s.Name, "dek_id", d.ID, "version", d.Version, "error", err)
				continue
			}
			swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: outs[i].wrapped, NewVersion: to})
		}
	}
	collect(deks, outs)
	getter, canGet := s.DEKs.(dekGetter)
	for round := 0; len(swaps) > 0; round++ {
		lost, err := s.DEKs.SwapDEKs(wctx, swaps, kl.fence())
		if err != nil {
			return res, fmt.Errorf("swap %d DEKs in source %s: %w", len(swaps), s.Name, err)
		}
		res.done += int64(len(swaps) - len(lost))
		swaps = swaps[:0]
		if len(lost) == 0 {
			break
		}
		if !canGet || round >= maxLostRounds || ctx.Err() != nil {
			res.left += len(lost)
			e.log.Warn("source rows changed during re-wrap; left for the next sweep", "key_id", key, "source", s.Name, "deks", len(lost))
			break
		}
		e.log.Info("source rows changed during re-wrap; re-reading them", "key_id", key, "source", s.Name, "deks", len(lost))
		var again []rekey.DEK
		for _, id := range lost {
			fresh, err := getter.GetDEK(wctx, id)
			switch {
			case errors.Is(err, rekey.ErrDEKNotFound):
				continue // deleted, or left the filter: nothing to re-wrap
			case err != nil:
				return res, fmt.Errorf("re-read row %s of source %s: %w", id, s.Name, err)
			case fresh.Key != key:
				continue
			case fresh.Version == to:
				res.done++ // the application (or another worker) wrote it under to
				continue
			}
			again = append(again, fresh)
		}
		if len(again) == 0 {
			break
		}
		outs, err := e.rewrapSourceRows(ctx, b, s, again, to)
		if err != nil {
			res.left += len(again)
			e.log.Warn("re-wrapping changed source rows failed; left for the next sweep", "key_id", key, "source", s.Name, "deks", len(again), "error", err)
			break
		}
		collect(again, outs)
	}
	return res, nil
}
