package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

const keyColumns = `name, backend, backend_ref, active_version, expires_at,
	rotation_period, rotate_within, notify_within, grace, destroy_after, created_at, updated_at,
	max_encryptions, rotate_at`

func scanKey(sc scanner) (rekey.Key, error) {
	var k rekey.Key
	var period, within, notify, grace, destroy, maxEnc int64
	var rotateAt float64
	var expires, created, updated sql.NullInt64
	err := sc.Scan(&k.Name, &k.Backend, &k.BackendRef, &k.ActiveVersion, &expires,
		&period, &within, &notify, &grace, &destroy, &created, &updated, &maxEnc, &rotateAt)
	if err != nil {
		return rekey.Key{}, err
	}
	k.ExpiresAt, k.CreatedAt, k.UpdatedAt = fromMicros(expires), fromMicros(created), fromMicros(updated)
	k.Policy = rekey.Policy{
		RotationPeriod: time.Duration(period),
		RotateWithin:   time.Duration(within),
		NotifyWithin:   time.Duration(notify),
		Grace:          time.Duration(grace),
		DestroyAfter:   time.Duration(destroy),
		MaxEncryptions: maxEnc,
		RotateAt:       rotateAt,
	}
	return k, nil
}

const versionColumns = `key, version, state, created_at, activated_at, expires_at, retire_after, retired_at, destroyed_at,
	backend, backend_ref, backend_version`

func scanVersion(sc scanner) (rekey.KeyVersion, error) {
	var v rekey.KeyVersion
	var created, activated, expires, retireAfter, retired, destroyed sql.NullInt64
	if err := sc.Scan(&v.Key, &v.Version, &v.State, &created, &activated, &expires, &retireAfter, &retired, &destroyed,
		&v.Backend, &v.BackendRef, &v.BackendVersion); err != nil {
		return rekey.KeyVersion{}, err
	}
	v.CreatedAt, v.ActivatedAt, v.ExpiresAt = fromMicros(created), fromMicros(activated), fromMicros(expires)
	v.RetireAfter, v.RetiredAt, v.DestroyedAt = fromMicros(retireAfter), fromMicros(retired), fromMicros(destroyed)
	return v, nil
}

func insertVersion(ctx context.Context, tx *sql.Tx, v rekey.KeyVersion) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO key_versions (`+versionColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		v.Key, v.Version, string(v.State), micros(v.CreatedAt), micros(v.ActivatedAt), micros(v.ExpiresAt),
		micros(v.RetireAfter), micros(v.RetiredAt), micros(v.DestroyedAt), v.Backend, v.BackendRef, v.BackendVersion)
	return err
}

// CreateKey implements rekey.Store. The first version must be active and
// be k.ActiveVersion (empty State and zero ActiveVersion are filled in so);
// zero CreatedAt/UpdatedAt are set to now, and a zero version ExpiresAt to
// k.ExpiresAt.
func (s *Store) CreateKey(ctx context.Context, k rekey.Key, v rekey.KeyVersion, events ...rekey.AuditEvent) error {
	const op = "create key"
	now := s.nowTime()
	k, v, err := storecheck.PrepareNewKey(k, v, now)
	if err != nil {
		return s.fail(op, err)
	}
	evs, err := storecheck.PrepareEvents(events, now)
	if err != nil {
		return s.fail(op, err)
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		p := k.Policy
		_, err := tx.ExecContext(ctx, `INSERT INTO keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			k.Name, k.Backend, k.BackendRef, k.ActiveVersion, micros(k.ExpiresAt),
			int64(p.RotationPeriod), int64(p.RotateWithin), int64(p.NotifyWithin), int64(p.Grace), int64(p.DestroyAfter),
			micros(k.CreatedAt), micros(k.UpdatedAt), p.MaxEncryptions, p.RotateAt)
		if err != nil {
			if errors.Is(mapErr(err), rekey.ErrConflict) {
				return fmt.Errorf("key %q: %w", k.Name, rekey.ErrKeyExists)
			}
			return err
		}
		if err := insertVersion(ctx, tx, v); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}

// GetKey implements rekey.Store.
func (s *Store) GetKey(ctx context.Context, name string) (rekey.Key, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return rekey.Key{}, s.fail("get key", fmt.Errorf("key %q: %w", name, rekey.ErrKeyNotFound))
	}
	if err != nil {
		return rekey.Key{}, s.fail("get key", err)
	}
	return k, nil
}

// ListKeys implements rekey.Store.
func (s *Store) ListKeys(ctx context.Context) ([]rekey.Key, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys ORDER BY name`)
	if err != nil {
		return nil, s.fail("list keys", err)
	}
	defer rows.Close()
	var out []rekey.Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, s.fail("list keys", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail("list keys", err)
	}
	return out, nil
}

// UpdateKeyPolicy implements rekey.Store. The key's active version gets
// expiresAt too, in the same transaction; its other versions keep theirs.
func (s *Store) UpdateKeyPolicy(ctx context.Context, name string, p rekey.Policy, expiresAt time.Time, events ...rekey.AuditEvent) error {
	const op = "update key policy"
	now := s.nowTime()
	evs, err := storecheck.PrepareEvents(events, now)
	if err != nil {
		return s.fail(op, err)
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE keys SET rotation_period = ?, rotate_within = ?, notify_within = ?,
			grace = ?, destroy_after = ?, expires_at = ?, updated_at = ?, max_encryptions = ?, rotate_at = ? WHERE name = ?`,
			int64(p.RotationPeriod), int64(p.RotateWithin), int64(p.NotifyWithin), int64(p.Grace), int64(p.DestroyAfter),
			micros(expiresAt), micros(now), p.MaxEncryptions, p.RotateAt, name)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("key %q: %w", name, rekey.ErrKeyNotFound)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE key_versions SET expires_at = ?
			WHERE key = ? AND version = (SELECT active_version FROM keys WHERE name = ?)`,
			micros(expiresAt), name, name); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}

// ListVersions implements rekey.Store. Times, ExpiresAt included, come
// back as rekey.NormalizeTime gives them.
func (s *Store) ListVersions(ctx context.Context, key string) ([]rekey.KeyVersion, error) {
	const op = "list versions"
	rows, err := s.r.QueryContext(ctx, `SELECT `+versionColumns+` FROM key_versions WHERE key = ? ORDER BY version`, key)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	var out []rekey.KeyVersion
	for rows.Next() {
		v, err := scanVersion(rows)
		if err != nil {
			return nil, s.fail(op, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(op, err)
	}
	if len(out) == 0 {
		// Every key has a version, so no version means no key.
		return nil, s.fail(op, fmt.Errorf("key %q: %w", key, rekey.ErrKeyNotFound))
	}
	return out, nil
}

// ChangeVersionState implements rekey.Store. Besides the state it sets the
// time field that goes with it: RetiredAt (retired), DestroyedAt
// (destroyed), RetireAfter = At + the key's grace (pending_retirement,
// when not set yet). c.To may not be active (activation goes through
// AdvanceRotation) and c.From may not be empty: both give
// ErrInvalidArgument. The fence is checked first, then the version, the
// From guard and the DEK count.
func (s *Store) ChangeVersionState(ctx context.Context, c rekey.VersionChange, fence *rekey.Lease, events ...rekey.AuditEvent) error {
	const op = "change version state"
	if err := storecheck.ValidateVersionChange(c); err != nil {
		return s.fail(op, err)
	}
	now := s.nowTime()
	evs, err := storecheck.PrepareEvents(events, now)
	if err != nil {
		return s.fail(op, err)
	}
	at := rekey.NormalizeTime(c.At)
	if at.IsZero() {
		at = now
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		if fence != nil {
			if err := checkFence(ctx, tx, c.Key, *fence); err != nil {
				return err
			}
		}
		var state rekey.VersionState
		var retireAfter sql.NullInt64
		var grace int64
		err := tx.QueryRowContext(ctx, `SELECT v.state, v.retire_after, k.grace FROM key_versions v
			JOIN keys k ON k.name = v.key WHERE v.key = ? AND v.version = ?`, c.Key, c.Version).Scan(&state, &retireAfter, &grace)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("key %q version %d: %w", c.Key, c.Version, rekey.ErrVersionNotFound)
		}
		if err != nil {
			return err
		}
		if !slices.Contains(c.From, state) {
			return fmt.Errorf("key %q version %d is %s, not one of %v: %w", c.Key, c.Version, state, c.From, rekey.ErrStale)
		}
		if c.RequireUnused {
			// The rows themselves, never the counter of dek_counts: a
			// version is retired or destroyed only on a real count. There
			// is no index on the version, so this reads the key's entries
			// of deks_key_id (once per retirement).
			var n int64
			if err := tx.QueryRowContext(ctx, countRowsSQL, c.Key, c.Version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return &rekey.VersionInUseError{Key: c.Key, Version: c.Version, DEKs: n}
			}
		}
		var q string
		args := []any{string(c.To)}
		switch c.To {
		case rekey.VersionRetired:
			q, args = `, retired_at = ?`, append(args, micros(at))
		case rekey.VersionDestroyed:
			q, args = `, destroyed_at = ?`, append(args, micros(at))
		case rekey.VersionPendingRetirement:
			if !retireAfter.Valid {
				q, args = `, retire_after = ?`, append(args, micros(at.Add(time.Duration(grace))))
			}
		}
		args = append(args, c.Key, c.Version)
		if _, err := tx.ExecContext(ctx, `UPDATE key_versions SET state = ?`+q+` WHERE key = ? AND version = ?`, args...); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}
