package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

// scanner is pgx.Row or pgx.Rows.
type scanner interface{ Scan(dest ...any) error }

// collect scans every row of rows with scan.
func collect[T any](rows pgx.Rows, err error, scan func(scanner) (T, error)) ([]T, error) {
	return collectN(rows, err, 0, scan)
}

// collectN is collect for up to about n rows, which it makes room for
// at once.
func collectN[T any](rows pgx.Rows, err error, n int, scan func(scanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	if n > 0 {
		out = make([]T, 0, n)
	}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

const keyColumns = `name, backend, backend_ref, active_version, expires_at,
	rotation_period, rotate_within, notify_within, grace, destroy_after, created_at, updated_at,
	max_encryptions, rotate_at`

func scanKey(sc scanner) (rekey.Key, error) {
	var k rekey.Key
	var period, within, notify, grace, destroy, maxEnc int64
	var rotateAt float64
	var expires, created, updated *time.Time
	err := sc.Scan(&k.Name, &k.Backend, &k.BackendRef, &k.ActiveVersion, &expires,
		&period, &within, &notify, &grace, &destroy, &created, &updated, &maxEnc, &rotateAt)
	if err != nil {
		return rekey.Key{}, err
	}
	k.ExpiresAt, k.CreatedAt, k.UpdatedAt = fromTS(expires), fromTS(created), fromTS(updated)
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
	var state string
	var created, activated, expires, retireAfter, retired, destroyed *time.Time
	if err := sc.Scan(&v.Key, &v.Version, &state, &created, &activated, &expires, &retireAfter, &retired, &destroyed,
		&v.Backend, &v.BackendRef, &v.BackendVersion); err != nil {
		return rekey.KeyVersion{}, err
	}
	v.State = rekey.VersionState(state)
	v.CreatedAt, v.ActivatedAt, v.ExpiresAt = fromTS(created), fromTS(activated), fromTS(expires)
	v.RetireAfter, v.RetiredAt, v.DestroyedAt = fromTS(retireAfter), fromTS(retired), fromTS(destroyed)
	return v, nil
}

func insertVersion(ctx context.Context, tx pgx.Tx, v rekey.KeyVersion) error {
	_, err := tx.Exec(ctx, `INSERT INTO key_versions (`+versionColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
		v.Key, v.Version, string(v.State), ts(v.CreatedAt), ts(v.ActivatedAt), ts(v.ExpiresAt),
		ts(v.RetireAfter), ts(v.RetiredAt), ts(v.DestroyedAt), v.Backend, v.BackendRef, v.BackendVersion)
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
	return s.write(ctx, op, func(tx pgx.Tx) error {
		p := k.Policy
		tag, err := tx.Exec(ctx, `INSERT INTO keys (`+keyColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
			ON CONFLICT (name) DO NOTHING`,
			k.Name, k.Backend, k.BackendRef, k.ActiveVersion, ts(k.ExpiresAt),
			int64(p.RotationPeriod), int64(p.RotateWithin), int64(p.NotifyWithin), int64(p.Grace), int64(p.DestroyAfter),
			ts(k.CreatedAt), ts(k.UpdatedAt), p.MaxEncryptions, p.RotateAt)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("key %q: %w", k.Name, rekey.ErrKeyExists)
		}
		if err := insertVersion(ctx, tx, v); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}

// GetKey implements rekey.Store.
func (s *Store) GetKey(ctx context.Context, name string) (rekey.Key, error) {
	if s.closed.Load() {
		return rekey.Key{}, errClosed
	}
	k, err := scanKey(s.pool.QueryRow(ctx, `SELECT `+keyColumns+` FROM keys WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return rekey.Key{}, s.fail("get key", fmt.Errorf("key %q: %w", name, rekey.ErrKeyNotFound))
	}
	if err != nil {
		return rekey.Key{}, s.fail("get key", err)
	}
	return k, nil
}

// ListKeys implements rekey.Store.
func (s *Store) ListKeys(ctx context.Context) ([]rekey.Key, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	rows, err := s.pool.Query(ctx, `SELECT `+keyColumns+` FROM keys ORDER BY name`)
	out, err := collect(rows, err, scanKey)
	if err != nil {
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
	return s.write(ctx, op, func(tx pgx.Tx) error {
		var active int
		err := tx.QueryRow(ctx, `UPDATE keys SET rotation_period = $1, rotate_within = $2, notify_within = $3,
			grace = $4, destroy_after = $5, expires_at = $6, updated_at = $7, max_encryptions = $8, rotate_at = $9
			WHERE name = $10 RETURNING active_version`,
			int64(p.RotationPeriod), int64(p.RotateWithin), int64(p.NotifyWithin), int64(p.Grace), int64(p.DestroyAfter),
			ts(expiresAt), ts(now), p.MaxEncryptions, p.RotateAt, name).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("key %q: %w", name, rekey.ErrKeyNotFound)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE key_versions SET expires_at = $1 WHERE key = $2 AND version = $3`,
			ts(expiresAt), name, active); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}

// ListVersions implements rekey.Store.
func (s *Store) ListVersions(ctx context.Context, key string) ([]rekey.KeyVersion, error) {
	const op = "list versions"
	if s.closed.Load() {
		return nil, errClosed
	}
	rows, err := s.pool.Query(ctx, `SELECT `+versionColumns+` FROM key_versions WHERE key = $1 ORDER BY version`, key)
	out, err := collect(rows, err, scanVersion)
	if err != nil {
		return nil, s.fail(op, err)
	}
	if len(out) == 0 {
		// Every key has a version, so no version means no key.
		return nil, s.fail(op, fmt.Errorf("key %q: %w", key, rekey.ErrKeyNotFound))
	}
	return out, nil
}

// ChangeVersionState implements rekey.Store, as sqlitestore does: the
// fence (lease row FOR SHARE), then the version row FOR UPDATE and its
// From guard, then with RequireUnused the DEK count in the same
// transaction. InsertDEKs and SwapDEKs lock the version row they write
// to FOR SHARE, so no DEK can join the version between the count and the
// commit.
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
	return s.write(ctx, op, func(tx pgx.Tx) error {
		if fence != nil {
			if err := checkFence(ctx, tx, c.Key, *fence); err != nil {
				return err
			}
		}
		var state string
		var retireAfter *time.Time
		var grace int64
		err := tx.QueryRow(ctx, `SELECT v.state, v.retire_after, k.grace FROM key_versions v
			JOIN keys k ON k.name = v.key WHERE v.key = $1 AND v.version = $2 FOR UPDATE OF v`, c.Key, c.Version).Scan(&state, &retireAfter, &grace)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("key %q version %d: %w", c.Key, c.Version, rekey.ErrVersionNotFound)
		}
		if err != nil {
			return err
		}
		if !slices.Contains(c.From, rekey.VersionState(state)) {
			return fmt.Errorf("key %q version %d is %s, not one of %v: %w", c.Key, c.Version, state, c.From, rekey.ErrStale)
		}
		if c.RequireUnused {
			// The rows themselves, never the counter of dek_counts: a
			// counter set wrong must not retire a version still in use.
			var n int64
			if err := tx.QueryRow(ctx, countRowsSQL, c.Key, c.Version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return &rekey.VersionInUseError{Key: c.Key, Version: c.Version, DEKs: n}
			}
		}
		var retiredAt, destroyedAt, newRetireAfter any
		switch c.To {
		case rekey.VersionRetired:
			retiredAt = ts(at)
		case rekey.VersionDestroyed:
			destroyedAt = ts(at)
		case rekey.VersionPendingRetirement:
			if retireAfter == nil {
				newRetireAfter = ts(at.Add(time.Duration(grace)))
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE key_versions SET state = $1,
			retired_at = COALESCE($2, retired_at), destroyed_at = COALESCE($3, destroyed_at),
			retire_after = COALESCE($4, retire_after) WHERE key = $5 AND version = $6`,
			string(c.To), retiredAt, destroyedAt, newRetireAfter, c.Key, c.Version); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}
