package memstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/rekeyhq/rekey"
)

// AppendAuditCheckpoint implements rekey.Store.
func (s *Store) AppendAuditCheckpoint(ctx context.Context, cp rekey.AuditCheckpoint) error {
	const op = "AppendAuditCheckpoint"
	if err := s.begin(op); err != nil {
		return err
	}
	defer s.mu.Unlock()
	switch {
	case cp.Seq <= 0:
		return wrapErr(op, fmt.Errorf("%w: checkpoint seq must be positive, got %d", rekey.ErrInvalidArgument, cp.Seq))
	case cp.Hash == "":
		return wrapErr(op, fmt.Errorf("%w: checkpoint of seq %d has no hash", rekey.ErrInvalidArgument, cp.Seq))
	case len(cp.MAC) == 0:
		return wrapErr(op, fmt.Errorf("%w: checkpoint of seq %d has no MAC", rekey.ErrInvalidArgument, cp.Seq))
	case cp.Seq > int64(len(s.audit)):
		return wrapErr(op, fmt.Errorf("%w: checkpoint of seq %d: the audit trail has no such event", rekey.ErrInvalidArgument, cp.Seq))
	}
	// Seq n is at index n-1.
	if h := s.audit[cp.Seq-1].Hash; h != cp.Hash {
		return wrapErr(op, fmt.Errorf("%w: checkpoint of seq %d names hash %s, but that event's hash is %s", rekey.ErrInvalidArgument, cp.Seq, cp.Hash, h))
	}
	i, found := slices.BinarySearchFunc(s.auditCPs, cp.Seq, func(c rekey.AuditCheckpoint, seq int64) int { return cmp.Compare(c.Seq, seq) })
	if found {
		return wrapErr(op, fmt.Errorf("%w: a checkpoint of seq %d exists", rekey.ErrConflict, cp.Seq))
	}
	cp.MAC = slices.Clone(cp.MAC)
	if cp.CreatedAt.IsZero() {
		cp.CreatedAt = s.now()
	}
	cp.CreatedAt = rekey.NormalizeTime(cp.CreatedAt)
	s.auditCPs = slices.Insert(s.auditCPs, i, cp)
	return nil
}

// ListAuditCheckpoints implements rekey.Store.
func (s *Store) ListAuditCheckpoints(ctx context.Context, afterSeq int64, limit int) ([]rekey.AuditCheckpoint, error) {
	if err := s.begin("ListAuditCheckpoints"); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if limit <= 0 {
		limit = 1000
	}
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
