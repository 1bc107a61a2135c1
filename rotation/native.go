package rotation

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/rekeyhq/rekey"
)

// Native DEK sources (issue 11, point 3): a source whose wrapped column
// holds the backend's own ciphertexts, made by the application with the
// provider's SDK (for awskms: a CiphertextBlob from the AWS SDK's
// GenerateDataKey, with no rekey encryption context, or an encryption
// context the application chose: Source.EncryptionContext).
//
// The application does not know rekey's version numbers: the version
// column of such a row may be NULL (unknown) or stale. So a native row's
// version is never trusted for the re-wrap: each row is one
// rekey.NativeRewrapper call (for awskms one ReEncrypt to the new
// version's KMS key with the same context, no source key named), and the
// backend reports which version's key had wrapped it. A row under a key
// that is no version of its rekey key is a DEK failure (ErrWrongVersion):
// reported by source and id, never written. The version column is then
// rekey's record, written with the new bytes by the same compare-and-swap.
//
// Retirement gate: a row whose version is unknown (NULL, counted under
// version 0) may be under any version, so it blocks the retirement of
// every version (dependents) until rekey has re-wrapped it; a retirement
// sweep of a native source therefore re-wraps every row not on the active
// version, NULL included. This holds for every source (a NULL version in
// a rekey-format source is just as unknown), but only a native source can
// clear such rows itself.

// unknownVersion is the version under which a source counts rows whose
// version column is NULL. No key has a version 0.
const unknownVersion = 0

// dependents is how many DEKs keep version from retiring (or from being
// disabled): those on it, plus those whose version is unknown.
func dependents(counts map[int]int64, version int) int64 {
	if version == unknownVersion {
		return counts[version]
	}
	return counts[version] + counts[unknownVersion]
}

// rewrapSourceRows re-wraps rows of s under version to: natively for a
// native source, else as rekey's own DEKs (rewrapAtBackend).
func (e *Engine) rewrapSourceRows(ctx context.Context, b *backend, s Source, deks []rekey.DEK, to int) ([]rewrapOut, error) {
	if !s.Native {
		return e.rewrapAtBackend(ctx, b, deks, to)
	}
	return e.rewrapNative(ctx, b, s, deks, to)
}

// rewrapNative re-wraps the rows of native source s under version to, one
// NativeRewrapper call per row with at most Concurrency in flight. A row
// the backend cannot re-wrap for reasons of its own (corrupt, another
// context, another KMS key, a disabled version's key) gets its error in
// outs and is left unchanged; any other failure stops the batch.
func (e *Engine) rewrapNative(ctx context.Context, b *backend, s Source, deks []rekey.DEK, to int) ([]rewrapOut, error) {
	dst, err := b.at(ctx, to)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", s.Name, err)
	}
	if dst.b.native == nil {
		return nil, fmt.Errorf("source %s holds native ciphertexts (format %s), but version %d of key %s is on backend %s, which cannot re-wrap them: keep the key on an awskms backend, or set the source's format to rekey",
			s.Name, s.Format, to, deks[0].Key, dst.b.name)
	}
	outs := make([]rewrapOut, len(deks))
	var stale atomic.Int64
	err = each(ctx, len(deks), e.cfg.Concurrency, func(ctx context.Context, i int) error {
		if !e.takeCall(ctx) {
			return nil
		}
		d := deks[i]
		w, fromBV, err := dst.b.native.RewrapNative(ctx, dst.b.ref, d.Wrapped, s.EncryptionContext, dst.version)
		e.giveCall()
		if err == nil && fromBV > 0 {
			var from int
			from, err = b.rt.versionAt(ctx, dst.b, fromBV)
			switch {
			case err != nil:
			case from == 0:
				err = fmt.Errorf("the blob is under version %d of the key at backend %s, which key %s does not have: %w", fromBV, dst.b.name, d.Key, rekey.ErrWrongVersion)
			case from != d.Version:
				stale.Add(1)
			}
		}
		if err := outs[i].take(w, err); err != nil {
			return fmt.Errorf("native re-wrap of row %s: %w", d.ID, err)
		}
		return nil
	})
	if err != nil {
		return outs, fmt.Errorf("source %s: %w", s.Name, err)
	}
	if n := stale.Load(); n > 0 {
		e.log.Debug("native source rows whose version column was unknown or stale", "key_id", deks[0].Key, "source", s.Name, "deks", n)
	}
	return outs, nil
}

// versionAt returns the key's version that lives on backend b as b's
// version bv, or 0 when the key has none there.
func (rt *router) versionAt(ctx context.Context, b *backend, bv int) (int, error) {
	find := func() int {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		for v, p := range rt.places {
			if p.err == nil && p.b == b && p.version == bv {
				return v
			}
		}
		return 0
	}
	if v := find(); v > 0 {
		return v, nil
	}
	if err := rt.load(ctx); err != nil && !errors.Is(err, rekey.ErrKeyNotFound) {
		return 0, err
	}
	return find(), nil
}
