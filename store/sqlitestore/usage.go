package sqlitestore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/rekeyhq/rekey"
)

// ReserveWraps implements rekey.WrapCounter: one write transaction (which
// holds SQLite's write lock from its first statement) reads the count,
// applies rekey.GrantWraps and writes the new total.
func (s *Store) ReserveWraps(ctx context.Context, r rekey.WrapReservation) (total, granted int64, err error) {
	const op = "reserve wraps"
	if err := rekey.ValidateWrapReservation(r); err != nil {
		return 0, 0, s.fail(op, err)
	}
	err = s.write(ctx, op, func(tx *sql.Tx) error {
		var count int64
		err := tx.QueryRowContext(ctx, `SELECT count FROM wrap_counts WHERE backend = ? AND ref = ? AND version = ?`,
			r.Backend, r.Ref, r.Version).Scan(&count)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if granted, err = rekey.GrantWraps(r, count); err != nil {
			return err
		}
		total = count + granted
		_, err = tx.ExecContext(ctx, `INSERT INTO wrap_counts (backend, ref, version, count) VALUES (?, ?, ?, ?)
			ON CONFLICT (backend, ref, version) DO UPDATE SET count = excluded.count`,
			r.Backend, r.Ref, r.Version, total)
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	return total, granted, nil
}

// WrapCount implements rekey.WrapCounter.
func (s *Store) WrapCount(ctx context.Context, backend, ref string, version int) (int64, error) {
	var n int64
	err := s.r.QueryRowContext(ctx, `SELECT count FROM wrap_counts WHERE backend = ? AND ref = ? AND version = ?`,
		backend, ref, version).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, s.fail("wrap count", err)
	}
	return n, nil
}
