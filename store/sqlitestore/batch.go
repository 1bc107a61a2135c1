package sqlitestore

import (
	"context"
	"database/sql"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

var _ rekey.BatchCommitter = (*Store)(nil)

// CommitBatch implements rekey.BatchCommitter: in one transaction, the
// guards of the checkpoint (the rotation exists, fence is current, the
// rotation is still in checkpoint.FromState), then the swaps exactly as
// SwapDEKs applies them, then the checkpoint exactly as AdvanceRotation
// applies it, with the number of swaps applied added to
// checkpoint.Rotation.Done and to the DEKs of each event. Any error
// (ErrFenced, ErrStale, ErrRotationNotFound, ErrVersionNotFound for a swap
// to a version the key lacks, ErrInvalidArgument, or the errors of
// AdvanceRotation) rolls everything back: nothing is written, swaps
// included. It returns the ids of the swaps that lost.
func (s *Store) CommitBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, checkpoint rekey.RotationUpdate) ([]string, error) {
	const op = "commit batch"
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, s.fail(op, err)
	}
	if err := storecheck.ValidateUpdate(checkpoint); err != nil {
		return nil, s.fail(op, err)
	}
	now := s.nowTime()
	evs, err := storecheck.PrepareEvents(checkpoint.Events, now)
	if err != nil {
		return nil, s.fail(op, err)
	}
	var lost []string
	err = s.writeOn(ctx, op, func(tx *sql.Tx, conn *sql.Conn) error {
		// The checkpoint's guards first: a fenced or stale batch costs no
		// row updates, and fails the same way on every store.
		p, err := planAdvance(ctx, tx, checkpoint, fence, now)
		if err != nil {
			return err
		}
		lost, err = swapDEKs(ctx, tx, conn, swaps, fence, now)
		if err != nil {
			return err
		}
		var batchEvs []rekey.AuditEvent
		p.next, batchEvs = storecheck.AddApplied(p.next, evs, len(swaps)-len(lost))
		return applyAdvance(ctx, tx, p, batchEvs)
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}
