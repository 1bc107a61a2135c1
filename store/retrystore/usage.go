package retrystore

import (
	"context"

	"github.com/rekeyhq/rekey"
)

// ReserveWraps implements rekey.WrapCounter. A store returns an
// *rekey.UnreachableError only when nothing was written, so a retry never
// counts twice.
func (s *Store) ReserveWraps(ctx context.Context, r rekey.WrapReservation) (total, granted int64, err error) {
	err = s.do(ctx, func(ctx context.Context) (err error) {
		total, granted, err = s.s.ReserveWraps(ctx, r)
		return err
	})
	return total, granted, err
}

// WrapCount implements rekey.WrapCounter.
func (s *Store) WrapCount(ctx context.Context, backend, ref string, version int) (int64, error) {
	return value(ctx, s, func(ctx context.Context) (int64, error) { return s.s.WrapCount(ctx, backend, ref, version) })
}
