package memstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

// AppendAuditCheckpoint implements rekey.Store.
func (s *Store) AppendAuditCheckpoint(ctx context.Context, cp rekey.AuditCheckpoint) error {
	const op = "AppendAuditCheckpoint"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	cp, err := storecheck.PrepareCheckpoint(cp, s.now())
	if err != nil {
		return wrapErr(op, err)
	}
	// Seq n is at index n-1.
	found, hash := cp.Seq <= int64(len(s.audit)), ""
	if found {
		hash = s.audit[cp.Seq-1].Hash
	}
	if err := storecheck.ValidateCheckpointEvent(cp, found, hash); err != nil {
		return wrapErr(op, err)
	}
	i, found := slices.BinarySearchFunc(s.auditCPs, cp.Seq, func(c rekey.AuditCheckpoint, seq int64) int { return cmp.Compare(c.Seq, seq) })
	if found {
		return wrapErr(op, fmt.Errorf("%w: a checkpoint of seq %d exists", rekey.ErrConflict, cp.Seq))
	}
	s.auditCPs = slices.Insert(s.auditCPs, i, cp)
	return nil
}

// ListAuditCheckpoints implements rekey.Store.
func (s *Store) ListAuditCheckpoints(ctx context.Context, afterSeq int64, limit int) ([]rekey.AuditCheckpoint, error) {
	if err := s.begin("ListAuditCheckpoints"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	limit = storecheck.ListLimit(limit)
	i, _ := slices.BinarySearchFunc(s.auditCPs, afterSeq+1, func(c rekey.AuditCheckpoint, seq int64) int { return cmp.Compare(c.Seq, seq) })
	var out []rekey.AuditCheckpoint
	for _, cp := range s.auditCPs[i:] {
		if len(out) == limit {
			break
		}
		cp.MAC = slices.Clone(cp.MAC)
		out = append(out, cp)
	}
	return out, nil
}

// LastAuditCheckpoint implements rekey.Store.
func (s *Store) LastAuditCheckpoint(ctx context.Context) (rekey.AuditCheckpoint, error) {
	const op = "LastAuditCheckpoint"
	if err := s.begin(op); err != nil {
		return rekey.AuditCheckpoint{}, err
	}
	defer s.mu.Unlock()
	if len(s.auditCPs) == 0 {
		return rekey.AuditCheckpoint{}, wrapErr(op, rekey.ErrCheckpointNotFound)
	}
	cp := s.auditCPs[len(s.auditCPs)-1]
	cp.MAC = slices.Clone(cp.MAC)
	return cp, nil
}
