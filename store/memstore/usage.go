package memstore

import (
	"context"

	"github.com/rekeyhq/rekey"
)

type wrapCountKey struct {
	backend, ref string
	version      int
}

// ReserveWraps implements rekey.WrapCounter.
func (s *Store) ReserveWraps(ctx context.Context, r rekey.WrapReservation) (total, granted int64, err error) {
	const op = "ReserveWraps"
	if err := rekey.ValidateWrapReservation(r); err != nil {
		return 0, 0, wrapErr(op, err)
	}
	if err := s.begin(op); err != nil {
		return 0, 0, err
	}
	defer s.mu.Unlock()
	if s.wraps == nil {
		s.wraps = map[wrapCountKey]int64{}
	}
	k := wrapCountKey{r.Backend, r.Ref, r.Version}
	granted, err = rekey.GrantWraps(r, s.wraps[k])
	if err != nil {
		return 0, 0, wrapErr(op, err)
	}
	s.wraps[k] += granted
	return s.wraps[k], granted, nil
}

// WrapCount implements rekey.WrapCounter.
func (s *Store) WrapCount(ctx context.Context, backend, ref string, version int) (int64, error) {
	if err := s.begin("WrapCount"); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	return s.wraps[wrapCountKey{backend, ref, version}], nil
}
