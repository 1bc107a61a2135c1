// Package retrystore wraps a rekey.Store so that every call is retried,
// with one retry.Policy, while it fails transiently (rekey.IsTransient).
// It is applied once, where the store is opened, so that callers (the
// engine, the Keyring, the CLI) never retry a store call themselves.
//
// Retrying is safe because stores return an *rekey.UnreachableError only
// when nothing was written: a retry never writes twice. A guarded write
// whose earlier try did commit but whose reply was lost fails its retry
// with ErrStale or ErrConflict; a caller that must tell the two apart
// reads the row back.
package retrystore

import (
	"context"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/retry"
)

// Store is a rekey.Store whose calls are retried while they fail
// transiently. Its methods return the inner store's errors; after the
// attempts are spent, the last transient error, and when the context ends
// during a backoff sleep, an error matching the context's cause. It is
// safe for concurrent use when the inner store is.
type Store struct {
	s rekey.Store
	p retry.Policy
}

var (
	_ rekey.Store            = (*Store)(nil)
	_ rekey.BatchCommitter   = (*Store)(nil)
	_ rekey.DEKRowCounter    = (*Store)(nil)
	_ rekey.ConcurrentWriter = (*Store)(nil)
)

// Wrap returns a rekey.Store that retries every method of s with p while
// it fails transiently (rekey.IsTransient), except Close, which is passed
// on once. It also forwards CommitBatch (rekey.BatchCommitter) when s has
// it. s must not be nil.
func Wrap(s rekey.Store, p retry.Policy) *Store { return &Store{s: s, p: p} }

// Unwrap returns the inner store, for callers that need a method beyond
// rekey.Store (such as sqlitestore's Path). Calls made on it are not
// retried.
func (s *Store) Unwrap() rekey.Store { return s.s }

// Unwrap returns the store inside s when s is a *Store, else s itself.
func Unwrap(s rekey.Store) rekey.Store {
	if w, ok := s.(*Store); ok {
		return w.s
	}
	return s
}

func (s *Store) do(ctx context.Context, fn func(context.Context) error) error {
	return s.p.Do(ctx, fn)
}

func value[T any](ctx context.Context, s *Store, fn func(context.Context) (T, error)) (T, error) {
	return retry.DoValue(ctx, s.p, fn)
}

// ListDEKs implements rekey.DEKSource.
func (s *Store) ListDEKs(ctx context.Context, q rekey.DEKQuery) ([]rekey.DEK, error) {
	return value(ctx, s, func(ctx context.Context) ([]rekey.DEK, error) { return s.s.ListDEKs(ctx, q) })
}

// SwapDEKs implements rekey.DEKSource.
func (s *Store) SwapDEKs(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease) ([]string, error) {
	return value(ctx, s, func(ctx context.Context) ([]string, error) { return s.s.SwapDEKs(ctx, swaps, fence) })
}

// CountDEKs implements rekey.DEKSource.
func (s *Store) CountDEKs(ctx context.Context, key string) (map[int]int64, error) {
	return value(ctx, s, func(ctx context.Context) (map[int]int64, error) { return s.s.CountDEKs(ctx, key) })
}

// CommitBatch implements rekey.BatchCommitter by passing the call on, with
// retries, when the inner store is a BatchCommitter; otherwise it returns
// an error matching rekey.ErrUnsupported.
func (s *Store) CommitBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, checkpoint rekey.RotationUpdate) ([]string, error) {
	bc, ok := s.s.(rekey.BatchCommitter)
	if !ok {
		return nil, fmt.Errorf("store: commit batch: %w", rekey.ErrUnsupported)
	}
	return value(ctx, s, func(ctx context.Context) ([]string, error) {
		return bc.CommitBatch(ctx, swaps, fence, checkpoint)
	})
}

// CreateKey implements rekey.Store.
func (s *Store) CreateKey(ctx context.Context, k rekey.Key, v rekey.KeyVersion, events ...rekey.AuditEvent) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.CreateKey(ctx, k, v, events...) })
}

// GetKey implements rekey.Store.
func (s *Store) GetKey(ctx context.Context, name string) (rekey.Key, error) {
	return value(ctx, s, func(ctx context.Context) (rekey.Key, error) { return s.s.GetKey(ctx, name) })
}

// ListKeys implements rekey.Store.
func (s *Store) ListKeys(ctx context.Context) ([]rekey.Key, error) {
	return value(ctx, s, s.s.ListKeys)
}

// UpdateKeyPolicy implements rekey.Store.
func (s *Store) UpdateKeyPolicy(ctx context.Context, name string, p rekey.Policy, expiresAt time.Time, events ...rekey.AuditEvent) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.UpdateKeyPolicy(ctx, name, p, expiresAt, events...) })
}

// ListVersions implements rekey.Store.
func (s *Store) ListVersions(ctx context.Context, key string) ([]rekey.KeyVersion, error) {
	return value(ctx, s, func(ctx context.Context) ([]rekey.KeyVersion, error) { return s.s.ListVersions(ctx, key) })
}

// ChangeVersionState implements rekey.Store.
func (s *Store) ChangeVersionState(ctx context.Context, c rekey.VersionChange, fence *rekey.Lease, events ...rekey.AuditEvent) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.ChangeVersionState(ctx, c, fence, events...) })
}

// InsertDEKs implements rekey.Store.
func (s *Store) InsertDEKs(ctx context.Context, deks []rekey.DEK) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.InsertDEKs(ctx, deks) })
}

// GetDEK implements rekey.Store.
func (s *Store) GetDEK(ctx context.Context, id string) (rekey.DEK, error) {
	return value(ctx, s, func(ctx context.Context) (rekey.DEK, error) { return s.s.GetDEK(ctx, id) })
}

// AcquireLease implements rekey.Store.
func (s *Store) AcquireLease(ctx context.Context, key, owner string, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	return value(ctx, s, func(ctx context.Context) (rekey.Lease, error) { return s.s.AcquireLease(ctx, key, owner, ttl, now) })
}

// RenewLease implements rekey.Store.
func (s *Store) RenewLease(ctx context.Context, l rekey.Lease, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	return value(ctx, s, func(ctx context.Context) (rekey.Lease, error) { return s.s.RenewLease(ctx, l, ttl, now) })
}

// ReleaseLease implements rekey.Store.
func (s *Store) ReleaseLease(ctx context.Context, l rekey.Lease) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.ReleaseLease(ctx, l) })
}

// GetLease implements rekey.Store.
func (s *Store) GetLease(ctx context.Context, key string) (rekey.Lease, error) {
	return value(ctx, s, func(ctx context.Context) (rekey.Lease, error) { return s.s.GetLease(ctx, key) })
}

// BreakLease implements rekey.Store.
func (s *Store) BreakLease(ctx context.Context, l rekey.Lease, now time.Time) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.BreakLease(ctx, l, now) })
}

// CreateRotation implements rekey.Store.
func (s *Store) CreateRotation(ctx context.Context, r rekey.Rotation, fence rekey.Lease, events ...rekey.AuditEvent) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.CreateRotation(ctx, r, fence, events...) })
}

// AdvanceRotation implements rekey.Store.
func (s *Store) AdvanceRotation(ctx context.Context, u rekey.RotationUpdate, fence rekey.Lease) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.AdvanceRotation(ctx, u, fence) })
}

// GetRotation implements rekey.Store.
func (s *Store) GetRotation(ctx context.Context, id string) (rekey.Rotation, error) {
	return value(ctx, s, func(ctx context.Context) (rekey.Rotation, error) { return s.s.GetRotation(ctx, id) })
}

// OpenRotation implements rekey.Store.
func (s *Store) OpenRotation(ctx context.Context, key string) (rekey.Rotation, error) {
	return value(ctx, s, func(ctx context.Context) (rekey.Rotation, error) { return s.s.OpenRotation(ctx, key) })
}

// ListRotations implements rekey.Store.
func (s *Store) ListRotations(ctx context.Context, q rekey.RotationQuery) ([]rekey.Rotation, error) {
	return value(ctx, s, func(ctx context.Context) ([]rekey.Rotation, error) { return s.s.ListRotations(ctx, q) })
}

// AppendAudit implements rekey.Store.
func (s *Store) AppendAudit(ctx context.Context, events ...rekey.AuditEvent) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.AppendAudit(ctx, events...) })
}

// ListAudit implements rekey.Store.
func (s *Store) ListAudit(ctx context.Context, q rekey.AuditQuery) ([]rekey.AuditEvent, error) {
	return value(ctx, s, func(ctx context.Context) ([]rekey.AuditEvent, error) { return s.s.ListAudit(ctx, q) })
}

// AppendAuditCheckpoint implements rekey.Store.
func (s *Store) AppendAuditCheckpoint(ctx context.Context, cp rekey.AuditCheckpoint) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.AppendAuditCheckpoint(ctx, cp) })
}

// ListAuditCheckpoints implements rekey.Store.
func (s *Store) ListAuditCheckpoints(ctx context.Context, afterSeq int64, limit int) ([]rekey.AuditCheckpoint, error) {
	return value(ctx, s, func(ctx context.Context) ([]rekey.AuditCheckpoint, error) {
		return s.s.ListAuditCheckpoints(ctx, afterSeq, limit)
	})
}

// LastAuditCheckpoint implements rekey.Store.
func (s *Store) LastAuditCheckpoint(ctx context.Context) (rekey.AuditCheckpoint, error) {
	return value(ctx, s, s.s.LastAuditCheckpoint)
}

// Ping implements rekey.Store; give it a context with a short deadline
// where an answer is due quickly (/readyz).
func (s *Store) Ping(ctx context.Context) error {
	return s.do(ctx, s.s.Ping)
}

// Close implements rekey.Store: it closes the inner store, once, without
// retries.
func (s *Store) Close() error { return s.s.Close() }

// CountDEKRows implements rekey.DEKRowCounter: the inner store's, or,
// for a store without it (whose CountDEKs counts the rows), its CountDEKs
// of the version.
func (s *Store) CountDEKRows(ctx context.Context, key string, version int) (int64, error) {
	return value(ctx, s, func(ctx context.Context) (int64, error) {
		if rc, ok := s.s.(rekey.DEKRowCounter); ok {
			return rc.CountDEKRows(ctx, key, version)
		}
		c, err := s.s.CountDEKs(ctx, key)
		return c[version], err
	})
}

// ConcurrentWrites implements rekey.ConcurrentWriter: the inner store's,
// 1 for a store without it.
func (s *Store) ConcurrentWrites() int {
	if cw, ok := s.s.(rekey.ConcurrentWriter); ok {
		return cw.ConcurrentWrites()
	}
	return 1
}

// DEKBounds implements rekey.RangeSharer.
func (s *Store) DEKBounds(ctx context.Context, key string, notVersion, every int) ([]string, error) {
	return value(ctx, s, func(ctx context.Context) ([]string, error) { return s.s.DEKBounds(ctx, key, notVersion, every) })
}

// SplitRewrap implements rekey.RangeSharer. A try whose success was hidden
// behind a transient error makes the next one fail with ErrConflict: the
// caller reads the ranges back.
func (s *Store) SplitRewrap(ctx context.Context, rotationID string, bounds []string, fence rekey.Lease, events ...rekey.AuditEvent) error {
	return s.do(ctx, func(ctx context.Context) error { return s.s.SplitRewrap(ctx, rotationID, bounds, fence, events...) })
}

// ListRewrapRanges implements rekey.RangeSharer.
func (s *Store) ListRewrapRanges(ctx context.Context, rotationID string) ([]rekey.RewrapRange, error) {
	return value(ctx, s, func(ctx context.Context) ([]rekey.RewrapRange, error) { return s.s.ListRewrapRanges(ctx, rotationID) })
}

// CommitRangeBatch implements rekey.RangeSharer. A try whose success was
// hidden behind a transient error makes the next one find its swaps lost
// (or the range finished: ErrStale); the engine re-reads them.
func (s *Store) CommitRangeBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, cp rekey.RangeCheckpoint) ([]string, error) {
	return value(ctx, s, func(ctx context.Context) ([]string, error) { return s.s.CommitRangeBatch(ctx, swaps, fence, cp) })
}
