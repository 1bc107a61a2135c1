package sqlitestore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

// AppendAuditCheckpoint implements rekey.Store. The event it names is read
// in the same write transaction, so a checkpoint is only ever stored for an
// event the trail holds with that hash.
func (s *Store) AppendAuditCheckpoint(ctx context.Context, cp rekey.AuditCheckpoint) error {
	const op = "append audit checkpoint"
	cp, err := storecheck.PrepareCheckpoint(cp, s.nowTime())
	if err != nil {
		return s.fail(op, err)
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		var hash string
		err := tx.QueryRowContext(ctx, `SELECT hash FROM audit_events WHERE seq = ?`, cp.Seq).Scan(&hash)
		found := !errors.Is(err, sql.ErrNoRows)
		if found && err != nil {
			return err
		}
		if err := storecheck.ValidateCheckpointEvent(cp, found, hash); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, hash, mac, key_id, created_at) VALUES (?, ?, ?, ?, ?)`,
			cp.Seq, cp.Hash, cp.MAC, cp.KeyID, micros(cp.CreatedAt))
		return err
	})
}

const checkpointColumns = `seq, hash, mac, key_id, created_at`

func scanCheckpoint(sc scanner) (rekey.AuditCheckpoint, error) {
	var cp rekey.AuditCheckpoint
	var at sql.NullInt64
	if err := sc.Scan(&cp.Seq, &cp.Hash, &cp.MAC, &cp.KeyID, &at); err != nil {
		return rekey.AuditCheckpoint{}, err
	}
	cp.CreatedAt = fromMicros(at)
	return cp, nil
}

// ListAuditCheckpoints implements rekey.Store.
func (s *Store) ListAuditCheckpoints(ctx context.Context, afterSeq int64, limit int) ([]rekey.AuditCheckpoint, error) {
	const op = "list audit checkpoints"
	limit = storecheck.ListLimit(limit)
	rows, err := s.r.QueryContext(ctx, `SELECT `+checkpointColumns+` FROM audit_checkpoints WHERE seq > ? ORDER BY seq LIMIT ?`,
		max(afterSeq, 0), limit)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	var out []rekey.AuditCheckpoint
	for rows.Next() {
		cp, err := scanCheckpoint(rows)
		if err != nil {
			return nil, s.fail(op, err)
		}
		out = append(out, cp)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// LastAuditCheckpoint implements rekey.Store.
func (s *Store) LastAuditCheckpoint(ctx context.Context) (rekey.AuditCheckpoint, error) {
	const op = "last audit checkpoint"
	cp, err := scanCheckpoint(s.r.QueryRowContext(ctx, `SELECT `+checkpointColumns+` FROM audit_checkpoints WHERE seq > 0 ORDER BY seq DESC LIMIT 1`))
	if errors.Is(err, sql.ErrNoRows) {
		return rekey.AuditCheckpoint{}, s.fail(op, rekey.ErrCheckpointNotFound)
	}
	if err != nil {
		return rekey.AuditCheckpoint{}, s.fail(op, err)
	}
	return cp, nil
}
