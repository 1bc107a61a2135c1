package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

// leaseRow is a row of leases.
type leaseRow struct {
	owner    string
	epoch    int64
	expires  int64 // unix µs
	released bool
}

// readLease reads the lease row of key; ok is false when there is none.
func readLease(ctx context.Context, tx *sql.Tx, key string) (row leaseRow, ok bool, err error) {
	err = tx.QueryRowContext(ctx, `SELECT owner, epoch, expires_at, released FROM leases WHERE key = ?`, key).
		Scan(&row.owner, &row.epoch, &row.expires, &row.released)
	if errors.Is(err, sql.ErrNoRows) {
		return leaseRow{}, false, nil
	}
	return row, err == nil, err
}

// checkFence returns ErrFenced unless fence is the current lease of key:
// same owner and epoch, not released, read in the caller's transaction.
// Expiry alone does not fence: only another owner acquiring the key (which
// increments the epoch) or a release does.
func checkFence(ctx context.Context, tx *sql.Tx, key string, fence rekey.Lease) error {
	row, ok, err := readLease(ctx, tx, key)
	if err != nil {
		return err
	}
	if fence.Key != key || !ok || row.released || row.owner != fence.Owner || row.epoch != fence.Epoch {
		return fmt.Errorf("key %q owner %s epoch %d: %w", key, fence.Owner, fence.Epoch, rekey.ErrFenced)
	}
	return nil
}

// AcquireLease implements rekey.Store. A lease that expired (expires_at <=
// now) or was released goes to the next owner with the epoch incremented;
// epochs of a key never go down.
func (s *Store) AcquireLease(ctx context.Context, key, owner string, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	const op = "acquire lease"
	if err := storecheck.ValidateAcquire(key, owner, ttl); err != nil {
		return rekey.Lease{}, s.fail(op, err)
	}
	now = rekey.NormalizeTime(now)
	l := rekey.Lease{Key: key, Owner: owner, ExpiresAt: rekey.NormalizeTime(now.Add(ttl))}
	err := s.write(ctx, op, func(tx *sql.Tx) error {
		row, ok, err := readLease(ctx, tx, key)
		if err != nil {
			return err
		}
		switch {
		case !ok:
			l.Epoch = 1
		case !row.released && row.expires > now.UnixMicro():
			if row.owner != owner {
				return fmt.Errorf("key %q is leased by %s until %s: %w", key, row.owner,
					time.UnixMicro(row.expires).UTC().Format(time.RFC3339), rekey.ErrLeaseHeld)
			}
			l.Epoch = row.epoch
		default:
			l.Epoch = row.epoch + 1
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO leases (key, owner, epoch, expires_at, released) VALUES (?, ?, ?, ?, 0)
			ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, epoch = excluded.epoch,
			expires_at = excluded.expires_at, released = 0`,
			key, owner, l.Epoch, l.ExpiresAt.UnixMicro())
		return err
	})
	if err != nil {
		return rekey.Lease{}, err
	}
	return l, nil
}

// RenewLease implements rekey.Store. A lease stays current, even past its
// expiry, until another owner acquires the key or it is released.
func (s *Store) RenewLease(ctx context.Context, l rekey.Lease, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	const op = "renew lease"
	if err := storecheck.ValidateRenew(ttl); err != nil {
		return rekey.Lease{}, s.fail(op, err)
	}
	next := l
	next.ExpiresAt = rekey.NormalizeTime(now.Add(ttl))
	err := s.write(ctx, op, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE leases SET expires_at = ?
			WHERE key = ? AND owner = ? AND epoch = ? AND released = 0`,
			next.ExpiresAt.UnixMicro(), l.Key, l.Owner, l.Epoch)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("key %q owner %s epoch %d: %w", l.Key, l.Owner, l.Epoch, rekey.ErrFenced)
		}
		return nil
	})
	if err != nil {
		return rekey.Lease{}, err
	}
	return next, nil
}

// ReleaseLease implements rekey.Store. The row stays (released) so that the
// next epoch is still higher; writes fenced by the released lease fail with
// ErrFenced.
func (s *Store) ReleaseLease(ctx context.Context, l rekey.Lease) error {
	return s.write(ctx, "release lease", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE leases SET released = 1 WHERE key = ? AND owner = ? AND epoch = ?`,
			l.Key, l.Owner, l.Epoch)
		return err
	})
}

// GetLease implements rekey.Store.
func (s *Store) GetLease(ctx context.Context, key string) (rekey.Lease, error) {
	const op = "get lease"
	var row leaseRow
	err := s.r.QueryRowContext(ctx, `SELECT owner, epoch, expires_at, released FROM leases WHERE key = ?`, key).
		Scan(&row.owner, &row.epoch, &row.expires, &row.released)
	if err == nil && row.released {
		err = sql.ErrNoRows
	}
	if errors.Is(err, sql.ErrNoRows) {
		return rekey.Lease{}, s.fail(op, fmt.Errorf("key %q: %w", key, rekey.ErrLeaseNotFound))
	}
	if err != nil {
		return rekey.Lease{}, s.fail(op, err)
	}
	return rekey.Lease{Key: key, Owner: row.owner, Epoch: row.epoch, ExpiresAt: time.UnixMicro(row.expires).UTC()}, nil
}

// BreakLease implements rekey.Store: one guarded UPDATE marks the lease
// released (so that the next owner gets the next epoch) and records now as
// its end.
func (s *Store) BreakLease(ctx context.Context, l rekey.Lease, now time.Time) error {
	const op = "break lease"
	if err := storecheck.ValidateBreak(l); err != nil {
		return s.fail(op, err)
	}
	expires := rekey.NormalizeTime(l.ExpiresAt).UnixMicro()
	end := expires
	if now = rekey.NormalizeTime(now); !now.IsZero() {
		end = min(end, now.UnixMicro())
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE leases SET released = 1, expires_at = ?
			WHERE key = ? AND owner = ? AND epoch = ? AND expires_at = ? AND released = 0`,
			end, l.Key, l.Owner, l.Epoch, expires)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("key %q owner %s epoch %d is no longer the current lease: %w", l.Key, l.Owner, l.Epoch, rekey.ErrStale)
		}
		return nil
	})
}
