package pgstore

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/rekeyhq/rekey"
)

// ReserveWraps implements rekey.WrapCounter: one transaction creates the
// row if missing, locks it (SELECT ... FOR UPDATE), applies
// rekey.GrantWraps and writes the new total, so concurrent reservations by
// any number of replicas add up.
func (s *Store) ReserveWraps(ctx context.Context, r rekey.WrapReservation) (total, granted int64, err error) {
	const op = "reserve wraps"
	if err := rekey.ValidateWrapReservation(r); err != nil {
		return 0, 0, s.fail(op, err)
	}
	err = s.write(ctx, op, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO wrap_counts (backend, ref, version, count) VALUES ($1, $2, $3, 0)
			ON CONFLICT (backend, ref, version) DO NOTHING`, r.Backend, r.Ref, r.Version); err != nil {
			return err
		}
		var count int64
		if err := tx.QueryRow(ctx, `SELECT count FROM wrap_counts WHERE backend = $1 AND ref = $2 AND version = $3 FOR UPDATE`,
			r.Backend, r.Ref, r.Version).Scan(&count); err != nil {
			return err
		}
		var err error
		if granted, err = rekey.GrantWraps(r, count); err != nil {
			return err
		}
		total = count + granted
		_, err = tx.Exec(ctx, `UPDATE wrap_counts SET count = $4 WHERE backend = $1 AND ref = $2 AND version = $3`,
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
	if s.closed.Load() {
		return 0, errClosed
	}
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count FROM wrap_counts WHERE backend = $1 AND ref = $2 AND version = $3`,
		backend, ref, version).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, s.fail("wrap count", err)
	}
	return n, nil
}
