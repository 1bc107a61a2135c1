package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

// checkFence returns ErrFenced unless fence is the current lease of key:
// same owner and epoch, not released. It reads the lease row FOR SHARE,
// so the lease cannot move on (AcquireLease, ReleaseLease and BreakLease
// update the row) before the caller's transaction ends; fenced writers of
// one lease do not wait for each other. Expiry alone does not fence.
func checkFence(ctx context.Context, tx pgx.Tx, key string, fence rekey.Lease) error {
	var owner string
	var epoch int64
	var released bool
	err := tx.QueryRow(ctx, `SELECT owner, epoch, released FROM leases WHERE key = $1 FOR SHARE`, key).Scan(&owner, &epoch, &released)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if fence.Key != key || err != nil || released || owner != fence.Owner || epoch != fence.Epoch {
		return fmt.Errorf("key %q owner %s epoch %d: %w", key, fence.Owner, fence.Epoch, rekey.ErrFenced)
	}
	return nil
}

// AcquireLease implements rekey.Store. A lease that expired (expires_at <=
// now) or was released goes to the next owner with the epoch incremented;
// epochs of a key never go down. The first acquisition of a key makes its
// row (epoch 0, released) and every acquisition then locks it FOR UPDATE,
// so racing owners serialise and exactly one wins.
func (s *Store) AcquireLease(ctx context.Context, key, owner string, ttl time.Duration, now time.Time) (rekey.Lease, error) {
	const op = "acquire lease"
	if err := storecheck.ValidateAcquire(key, owner, ttl); err != nil {
		return rekey.Lease{}, s.fail(op, err)
	}
	now = rekey.NormalizeTime(now)
	l := rekey.Lease{Key: key, Owner: owner, ExpiresAt: rekey.NormalizeTime(now.Add(ttl))}
	err := s.write(ctx, op, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO leases (key, owner, epoch, expires_at, released)
			VALUES ($1, '', 0, '1970-01-01 00:00:00+00', true) ON CONFLICT (key) DO NOTHING`, key); err != nil {
			return err
		}
		var cur rekey.Lease
		var released bool
		var expires time.Time
		if err := tx.QueryRow(ctx, `SELECT owner, epoch, expires_at, released FROM leases WHERE key = $1 FOR UPDATE`, key).
			Scan(&cur.Owner, &cur.Epoch, &expires, &released); err != nil {
			return err
		}
		switch {
		case !released && expires.After(now):
			if cur.Owner != owner {
				return fmt.Errorf("key %q is leased by %s until %s: %w", key, cur.Owner,
					expires.UTC().Format(time.RFC3339), rekey.ErrLeaseHeld)
			}
			l.Epoch = cur.Epoch
		default:
			l.Epoch = cur.Epoch + 1
		}
		_, err := tx.Exec(ctx, `UPDATE leases SET owner = $2, epoch = $3, expires_at = $4, released = false WHERE key = $1`,
			key, owner, l.Epoch, l.ExpiresAt)
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
	err := s.write(ctx, op, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE leases SET expires_at = $1
			WHERE key = $2 AND owner = $3 AND epoch = $4 AND NOT released`,
			next.ExpiresAt, l.Key, l.Owner, l.Epoch)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
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
	return s.write(ctx, "release lease", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE leases SET released = true WHERE key = $1 AND owner = $2 AND epoch = $3`,
			l.Key, l.Owner, l.Epoch)
		return err
	})
}

// GetLease implements rekey.Store.
func (s *Store) GetLease(ctx context.Context, key string) (rekey.Lease, error) {
	const op = "get lease"
	if s.closed.Load() {
		return rekey.Lease{}, errClosed
	}
	l := rekey.Lease{Key: key}
	var released bool
	err := s.pool.QueryRow(ctx, `SELECT owner, epoch, expires_at, released FROM leases WHERE key = $1`, key).
		Scan(&l.Owner, &l.Epoch, &l.ExpiresAt, &released)
	if err == nil && released {
		err = pgx.ErrNoRows
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return rekey.Lease{}, s.fail(op, fmt.Errorf("key %q: %w", key, rekey.ErrLeaseNotFound))
	}
	if err != nil {
		return rekey.Lease{}, s.fail(op, err)
	}
	l.ExpiresAt = l.ExpiresAt.UTC()
	return l, nil
}

// BreakLease implements rekey.Store: one guarded UPDATE marks the lease
// released (so that the next owner gets the next epoch) and records now as
// its end.
func (s *Store) BreakLease(ctx context.Context, l rekey.Lease, now time.Time) error {
	const op = "break lease"
	if err := storecheck.ValidateBreak(l); err != nil {
		return s.fail(op, err)
	}
	expires := rekey.NormalizeTime(l.ExpiresAt)
	end := expires
	if now = rekey.NormalizeTime(now); !now.IsZero() && now.Before(end) {
		end = now
	}
	return s.write(ctx, op, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE leases SET released = true, expires_at = $1
			WHERE key = $2 AND owner = $3 AND epoch = $4 AND expires_at = $5 AND NOT released`,
			end, l.Key, l.Owner, l.Epoch, expires)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("key %q owner %s epoch %d is no longer the current lease: %w", l.Key, l.Owner, l.Epoch, rekey.ErrStale)
		}
		return nil
	})
}
