package memstore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

var _ rekey.RangeSharer = (*Store)(nil)

// DEKBounds implements rekey.RangeSharer.
func (s *Store) DEKBounds(ctx context.Context, key string, notVersion, every int) ([]string, error) {
	const op = "DEKBounds"
	if err := s.begin(op); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateEvery(key, every); err != nil {
		return nil, wrapErr(op, err)
	}
	kr, ok := s.keys[key]
	if !ok {
		return nil, nil
	}
	var out []string
	n := 0
	for _, id := range kr.dekIDs {
		if s.deks[id].Version == notVersion {
			continue
		}
		if n++; n%every == 0 {
			out = append(out, id)
		}
	}
	return out, nil
}

// SplitRewrap implements rekey.RangeSharer.
func (s *Store) SplitRewrap(ctx context.Context, rotationID string, bounds []string, fence rekey.Lease, events ...rekey.AuditEvent) error {
	const op = "SplitRewrap"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateBounds(rotationID, bounds); err != nil {
		return wrapErr(op, err)
	}
	evs, err := s.prepareEvents(events)
	if err != nil {
		return wrapErr(op, err)
	}
	r, ok := s.rotations[rotationID]
	if !ok {
		return wrapErr(op, fmt.Errorf("rotation %s: %w", rotationID, rekey.ErrRotationNotFound))
	}
	if err := s.checkFenceLocked(r.Key, fence); err != nil {
		return wrapErr(op, err)
	}
	if r.State != rekey.RotationRewrapping {
		return wrapErr(op, fmt.Errorf("rotation %s is %s, not rewrapping: %w", rotationID, r.State, rekey.ErrStale))
	}
	if s.ranges == nil {
		s.ranges = map[string][]*rekey.RewrapRange{}
	}
	if len(s.ranges[rotationID]) > 0 {
		return wrapErr(op, fmt.Errorf("rotation %s was split already: %w", rotationID, rekey.ErrConflict))
	}
	rs := make([]*rekey.RewrapRange, 0, len(bounds)+1)
	from := ""
	for i := 0; i <= len(bounds); i++ {
		rg := &rekey.RewrapRange{RotationID: rotationID, Key: r.Key, Index: i, From: from}
		if i < len(bounds) {
			rg.To = bounds[i]
			from = bounds[i]
		}
		rs = append(rs, rg)
	}
	s.ranges[rotationID] = rs
	s.appendLocked(evs)
	return nil
}

// ListRewrapRanges implements rekey.RangeSharer.
func (s *Store) ListRewrapRanges(ctx context.Context, rotationID string) ([]rekey.RewrapRange, error) {
	if err := s.begin("ListRewrapRanges"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]rekey.RewrapRange, 0, len(s.ranges[rotationID]))
	for _, rg := range s.ranges[rotationID] {
		out = append(out, *rg)
	}
	return out, nil
}

// CommitRangeBatch implements rekey.RangeSharer. Everything is checked
// before anything is written.
func (s *Store) CommitRangeBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, cp rekey.RangeCheckpoint) ([]string, error) {
	const op = "CommitRangeBatch"
	if err := s.begin(op); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if err := storecheck.ValidateRangeCheckpoint(cp); err != nil {
		return nil, wrapErr(op, err)
	}
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, wrapErr(op, err)
	}
	evs, err := s.prepareEvents(cp.Events)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	lk := rekey.RangeLeaseKey(cp.RotationID, cp.Index)
	if err := s.checkFenceLocked(lk, fence); err != nil {
		return nil, wrapErr(op, err)
	}
	if exp := s.leases[lk].lease.ExpiresAt; !exp.After(cp.Now) {
		return nil, wrapErr(op, fmt.Errorf("range lease %q owner %s epoch %d expired at %s: %w", lk, fence.Owner, fence.Epoch, exp.Format(time.RFC3339), rekey.ErrFenced))
	}
	r, ok := s.rotations[cp.RotationID]
	if !ok {
		return nil, wrapErr(op, fmt.Errorf("rotation %s: %w", cp.RotationID, rekey.ErrRotationNotFound))
	}
	if r.State != rekey.RotationRewrapping {
		return nil, wrapErr(op, fmt.Errorf("rotation %s is %s, not rewrapping: %w", cp.RotationID, r.State, rekey.ErrStale))
	}
	rs := s.ranges[cp.RotationID]
	if cp.Index < 0 || cp.Index >= len(rs) {
		return nil, wrapErr(op, fmt.Errorf("rotation %s has no range %d: %w", cp.RotationID, cp.Index, rekey.ErrStale))
	}
	rg := rs[cp.Index]
	if rg.Finished {
		return nil, wrapErr(op, fmt.Errorf("range %d of rotation %s is finished: %w", cp.Index, cp.RotationID, rekey.ErrStale))
	}
	kr := s.keys[r.Key]
	for _, sw := range swaps {
		if _, ok := kr.versions[sw.NewVersion]; !ok {
			return nil, wrapErr(op, fmt.Errorf("dek %s: key %q version %d: %w", sw.ID, r.Key, sw.NewVersion, rekey.ErrVersionNotFound))
		}
	}
	now := s.now()
	var lost []string
	for _, sw := range swaps {
		d, ok := s.deks[sw.ID]
		if !ok || d.Key != r.Key || !storecheck.InRange(sw.ID, rg.From, rg.To) || !bytes.Equal(d.Wrapped, sw.OldWrapped) {
			lost = append(lost, sw.ID)
			continue
		}
		d.Wrapped = slices.Clone(sw.NewWrapped)
		d.Version = sw.NewVersion
		d.UpdatedAt = now
	}
	applied := int64(len(swaps) - len(lost))
	done, failed := cp.Done+applied, int64(len(cp.FailedIDs))
	rg.Cursor = cp.Cursor
	rg.Done += done
	rg.Failed += failed
	rg.Finished = rg.Finished || cp.Finished
	r.Done += done
	r.Failed += failed
	r.FailedDEKs = storecheck.AppendFailed(r.FailedDEKs, cp.FailedIDs)
	r.UpdatedAt = now
	evs = storecheck.AddEventDEKs(evs, int(applied))
	s.appendLocked(evs)
	return lost, nil
}
