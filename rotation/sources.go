package rotation

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/failpoint"
	"github.com/rekeyhq/rekey/status"
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
	// PerRowKey is set when a column names each row's key (key_column):
	// the source may hold rows of any key. When such a source cannot be
	// read, rekey cannot tell which keys it concerns, and failing every
	// key's cycle would stop all rotation for one broken table. So it
	// fails none: each key's pass over it is skipped (logged per key),
	// its rows stay on the versions they reference, and no key's old
	// version retires or is disabled while it cannot be counted (the
	// retirement waits, logged and reported as blocked). A source with
	// one key (key:) concerns that key alone and fails its cycles.
	PerRowKey bool
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

// SourceError is a DEK source that could not be read or written (its
// database is down, its table or a column is missing, a privilege is
// lacking). Err names the source and the operation.
type SourceError struct {
	Source string
	Err    error
}

func (e *SourceError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *SourceError) Unwrap() error { return e.Err }

func sourceErr(name string, err error) error {
	if err == nil {
		return nil
	}
	return &SourceError{Source: name, Err: err}
}

// skipBroken reports whether err, from key's work on source s, is a
// per-row-key source that cannot be read (see Source.PerRowKey): then it
// is logged and the key's work goes on without the source.
func (e *Engine) skipBroken(ctx context.Context, key string, s Source, err error) bool {
	var se *SourceError
	if !s.PerRowKey || ctx.Err() != nil || !errors.As(err, &se) {
		return false
	}
	e.log.Warn("DEK source cannot be read; its rows of this key (if any) stay on their versions, and no old version retires until it answers: run rekey source check "+s.Name,
		"key_id", key, "source", s.Name, "error", err)
	return true
}

// SourceCount is how many rows of one key a source holds per version.
type SourceCount = status.SourceCount

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

// addSourceCounts adds every source's rows of key per version to c. A
// source that cannot be counted is an error, unless lenient and the source
// is per-row-key: then it is left out and returned in down.
func (e *Engine) addSourceCounts(ctx context.Context, key string, c map[int]int64, lenient bool) (down []*SourceError, err error) {
	for _, s := range e.sourcesFor(key) {
		sc, err := s.DEKs.CountDEKs(ctx, key)
		if err != nil {
			err = sourceErr(s.Name, fmt.Errorf("count DEKs of key %s in source %s: %w", key, s.Name, err))
			if lenient && s.PerRowKey && ctx.Err() == nil {
				down = append(down, err.(*SourceError))
				continue
			}
			return down, err
		}
		for v, n := range sc {
			c[v] += n
		}
	}
	return down, nil
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

// keyNamer is the optional method of a source that says how many of its
// rows name each key (source.Source.KeysNamed).
type keyNamer interface {
	KeysNamed(ctx context.Context) (map[string]int64, error)
}

// UnknownKeys returns, per source, the keys its rows name that are not in
// known, with their row counts: such rows are never counted, re-wrapped
// or gating any retirement (a typo in a key column, a key deleted from
// rekey). A source that cannot be asked is left out.
func (e *Engine) UnknownKeys(ctx context.Context, known []string) map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	for _, s := range e.cfg.Sources {
		kn, ok := s.DEKs.(keyNamer)
		if !ok {
			continue
		}
		named, err := kn.KeysNamed(ctx)
		if err != nil {
			continue
		}
		for k, n := range named {
			if !slices.Contains(known, k) {
				if out[s.Name] == nil {
					out[s.Name] = map[string]int64{}
				}
				out[s.Name][k] = n
			}
		}
	}
	return out
}

// warnUnknownKeys logs the rows of sources that name keys rekey does not
// have, when that changed since the last cycle.
func (e *Engine) warnUnknownKeys(ctx context.Context, keys []rekey.Key) {
	if len(e.cfg.Sources) == 0 {
		return
	}
	known := make([]string, len(keys))
	for i, k := range keys {
		known[i] = k.Name
	}
	unknown := e.UnknownKeys(ctx, known)
	seen := fmt.Sprint(unknown)
	e.mu.Lock()
	same := seen == e.unknownSeen
	e.unknownSeen = seen
	e.mu.Unlock()
	if same {
		return
	}
	for _, name := range slices.Sorted(maps.Keys(unknown)) {
		for _, k := range slices.Sorted(maps.Keys(unknown[name])) {
			e.log.Warn("rows of a DEK source name a key rekey does not have; they are not rotated: create the key or correct the rows",
				"source", name, "key_id", k, "deks", unknown[name][k])
		}
	}
}

// sourceRowsOn counts the rows of key in every source that keep version
// from retiring: those on it and those whose version is unknown.
func (e *Engine) sourceRowsOn(ctx context.Context, key string, version int) (int64, error) {
	c := map[int]int64{}
	if _, err := e.addSourceCounts(ctx, key, c, false); err != nil {
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
	start, resume, resumed := 0, "", false
	if name, id, ok := parseSourceCursor(d.r.Cursor); ok {
		for i, s := range srcs {
			if s.Name == name {
				start, resume, resumed = i, id, true
			}
		}
	}
	for i, s := range srcs[start:] {
		cursor := ""
		switch {
		case i == 0 && resumed:
			cursor = resume
		case state == rekey.RotationRewrapping:
			// After a shared re-wrap, a split source's rows before its
			// last range's cursor were met by its ranges (srcranges.go);
			// the final sweep after the commit lists them all again.
			cursor = d.srcAfter[s.Name]
		}
		err := d.sourcePass(ctx, state, s, cursor)
		if err != nil && !d.e.skipBroken(ctx, d.key.Name, s, err) {
			return err
		}
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
			return sourceErr(s.Name, fmt.Errorf("list DEKs of key %s in source %s: %w", d.key.Name, s.Name, err))
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
		n, err := e.sweepSourceVersion(ctx, kl, k, b, s, version)
		moved += n
		if err != nil && !e.skipBroken(ctx, k.Name, s, err) {
			return moved, err
		}
	}
	if moved > 0 {
		e.log.Info("re-wrapped source rows left on an old version", "key_id", k.Name, "from_version", version, "to_version", k.ActiveVersion, "deks_rotated", moved)
	}
	return moved, nil
}

// sweepSourceVersion is sweepSourcesVersion over one source.
func (e *Engine) sweepSourceVersion(ctx context.Context, kl *keyLease, k rekey.Key, b *backend, s Source, version int) (int64, error) {
	var moved int64
	cursor := ""
	for {
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		q := rekey.DEKQuery{Key: k.Name, Version: version, After: cursor, Limit: e.cfg.BatchSize}
		if s.Native {
			// A native row's version column may be NULL or stale: every
			// row off the active version may be on version.
			q.Version, q.NotVersion = 0, k.ActiveVersion
		}
		deks, err := s.DEKs.ListDEKs(ctx, q)
		if err != nil {
			return moved, sourceErr(s.Name, fmt.Errorf("list DEKs of key %s in source %s: %w", k.Name, s.Name, err))
		}
		if len(deks) == 0 {
			return moved, nil
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
			swaps = append(swaps, rekey.DEKSwap{ID: d.ID, OldWrapped: d.Wrapped, NewWrapped: outs[i].wrapped, NewVersion: to, OldVersion: d.Version})
		}
	}
	collect(deks, outs)
	getter, canGet := s.DEKs.(dekGetter)
	for round := 0; len(swaps) > 0; round++ {
		lost, err := s.DEKs.SwapDEKs(wctx, swaps, kl.fence())
		if err != nil {
			return res, sourceErr(s.Name, fmt.Errorf("swap %d DEKs in source %s: %w", len(swaps), s.Name, err))
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
				return res, sourceErr(s.Name, fmt.Errorf("re-read row %s of source %s: %w", id, s.Name, err))
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
