package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

const rotationColumns = `id, key, from_version, to_version, state, reason, note, compromised,
	deks_total, deks_done, deks_failed, cursor, failed_deks, started_at, updated_at, finished_at,
	owner, epoch, last_error, to_backend`

func scanRotation(sc scanner) (rekey.Rotation, error) {
	var r rekey.Rotation
	var failed sql.NullString
	var started, updated, finished sql.NullInt64
	err := sc.Scan(&r.ID, &r.Key, &r.FromVersion, &r.ToVersion, &r.State, &r.Reason, &r.Note, &r.Compromised,
		&r.Total, &r.Done, &r.Failed, &r.Cursor, &failed, &started, &updated, &finished,
		&r.Owner, &r.Epoch, &r.LastError, &r.ToBackend)
	if err != nil {
		return rekey.Rotation{}, err
	}
	if failed.Valid && failed.String != "" {
		if err := json.Unmarshal([]byte(failed.String), &r.FailedDEKs); err != nil {
			return rekey.Rotation{}, fmt.Errorf("rotation %s: failed_deks: %w", r.ID, err)
		}
	}
	if len(r.FailedDEKs) == 0 {
		r.FailedDEKs = nil
	}
	r.StartedAt, r.UpdatedAt, r.FinishedAt = fromMicros(started), fromMicros(updated), fromMicros(finished)
	return r, nil
}

// failedJSON is the failed_deks column value: a JSON array, or NULL.
func failedJSON(ids []string) (any, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(ids)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

// CreateRotation implements rekey.Store. r.State must be empty or claimed;
// r.Owner and r.Epoch are taken from fence. The one-open-rotation rule is
// the partial unique index rotations_one_open_per_key.
func (s *Store) CreateRotation(ctx context.Context, r rekey.Rotation, fence rekey.Lease, events ...rekey.AuditEvent) error {
	const op = "create rotation"
	now := s.nowTime()
	r, err := storecheck.PrepareNewRotation(r, fence, now)
	if err != nil {
		return s.fail(op, err)
	}
	evs, err := storecheck.PrepareEvents(events, now)
	if err != nil {
		return s.fail(op, err)
	}
	failed, err := failedJSON(r.FailedDEKs)
	if err != nil {
		return s.fail(op, err)
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM keys WHERE name = ?`, r.Key).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("key %q: %w", r.Key, rekey.ErrKeyNotFound)
		}
		if err != nil {
			return err
		}
		if err := checkFence(ctx, tx, r.Key, fence); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO rotations (`+rotationColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			r.ID, r.Key, r.FromVersion, r.ToVersion, string(r.State), string(r.Reason), r.Note, r.Compromised,
			r.Total, r.Done, r.Failed, r.Cursor, failed, micros(r.StartedAt), micros(r.UpdatedAt), micros(r.FinishedAt),
			r.Owner, r.Epoch, r.LastError, r.ToBackend)
		if err != nil {
			if errors.Is(mapErr(err), rekey.ErrConflict) {
				return fmt.Errorf("rotation %s of key %q: the key has an open rotation or the id is taken: %w", r.ID, r.Key, rekey.ErrConflict)
			}
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}

// AdvanceRotation implements rekey.Store. The rotation's id, key,
// from_version, reason and started_at never change; Owner and Epoch are
// taken from fence; the state may stay or move forward, never back
// (ErrInvalidArgument). The fence is checked before the state guard. With
// Activate, the version to activate must be in state created (else
// ErrStale) and the key's active version must still be Activate.Previous
// (else ErrStale); the version activated gets Activate.ExpiresAt.
func (s *Store) AdvanceRotation(ctx context.Context, u rekey.RotationUpdate, fence rekey.Lease) error {
	const op = "advance rotation"
	if err := storecheck.ValidateUpdate(u); err != nil {
		return s.fail(op, err)
	}
	now := s.nowTime()
	evs, err := storecheck.PrepareEvents(u.Events, now)
	if err != nil {
		return s.fail(op, err)
	}
	return s.write(ctx, op, func(tx *sql.Tx) error {
		p, err := planAdvance(ctx, tx, u, fence, now)
		if err != nil {
			return err
		}
		return applyAdvance(ctx, tx, p, evs)
	})
}

// advancePlan is a rotation update that passed its guards (the rotation
// exists, fence is current, the rotation is still in FromState), with the
// rotation's next values merged, ready for applyAdvance in the same
// transaction.
type advancePlan struct {
	u    rekey.RotationUpdate
	cur  rekey.Rotation
	next rekey.Rotation
	now  time.Time
}

// planAdvance reads the rotation u names in tx and checks the guards of
// AdvanceRotation, fence before state. It writes nothing.
func planAdvance(ctx context.Context, tx *sql.Tx, u rekey.RotationUpdate, fence rekey.Lease, now time.Time) (advancePlan, error) {
	cur, err := scanRotation(tx.QueryRowContext(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE id = ?`, u.Rotation.ID))
	if errors.Is(err, sql.ErrNoRows) {
		return advancePlan{}, fmt.Errorf("rotation %s: %w", u.Rotation.ID, rekey.ErrRotationNotFound)
	}
	if err != nil {
		return advancePlan{}, err
	}
	if err := storecheck.ValidateUpdateKey(cur, u); err != nil {
		return advancePlan{}, err
	}
	if err := checkFence(ctx, tx, cur.Key, fence); err != nil {
		return advancePlan{}, err
	}
	if cur.State != u.FromState {
		return advancePlan{}, fmt.Errorf("rotation %s is %s, not %s: %w", cur.ID, cur.State, u.FromState, rekey.ErrStale)
	}
	return advancePlan{u: u, cur: cur, next: storecheck.MergeRotation(cur, u.Rotation, fence, now), now: now}, nil
}

// applyAdvance writes p in tx: the new version, the activation, the
// rotation's next values and evs. It fails (and the caller rolls back) on
// a version number that exists and on an activation whose guards fail.
func applyAdvance(ctx context.Context, tx *sql.Tx, p advancePlan, evs []rekey.AuditEvent) error {
	key, next := p.cur.Key, p.next
	if p.u.NewVersion != nil {
		nv, err := storecheck.PrepareNewVersion(*p.u.NewVersion, key, p.now)
		if err != nil {
			return err
		}
		if err := insertVersion(ctx, tx, nv); err != nil {
			if errors.Is(mapErr(err), rekey.ErrConflict) {
				return fmt.Errorf("key %q version %d exists: %w", key, nv.Version, rekey.ErrConflict)
			}
			return err
		}
	}
	if p.u.Activate != nil {
		if err := activate(ctx, tx, key, *p.u.Activate, next); err != nil {
			return err
		}
	}
	failed, err := failedJSON(next.FailedDEKs)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE rotations SET to_version = ?, state = ?, note = ?, compromised = ?,
		deks_total = ?, deks_done = ?, deks_failed = ?, cursor = ?, failed_deks = ?, updated_at = ?,
		finished_at = ?, owner = ?, epoch = ?, last_error = ? WHERE id = ?`,
		next.ToVersion, string(next.State), next.Note, next.Compromised,
		next.Total, next.Done, next.Failed, next.Cursor, failed, micros(next.UpdatedAt),
		micros(next.FinishedAt), next.Owner, next.Epoch, next.LastError, next.ID)
	if err != nil {
		return err
	}
	return appendEvents(ctx, tx, evs)
}

// activate commits a rotation: the key's active version and expiry, the
// new version active with that expiry, the previous one pending retirement
// unless it is no longer active (a compromised version stays compromised;
// either way it keeps its own expiry).
func activate(ctx context.Context, tx *sql.Tx, key string, a rekey.Activation, r rekey.Rotation) error {
	var state rekey.VersionState
	var vBackend, vRef string
	err := tx.QueryRowContext(ctx, `SELECT state, backend, backend_ref FROM key_versions WHERE key = ? AND version = ?`, key, a.Version).Scan(&state, &vBackend, &vRef)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("activate key %q version %d: %w", key, a.Version, rekey.ErrVersionNotFound)
	}
	if err != nil {
		return err
	}
	if state != rekey.VersionCreated {
		return fmt.Errorf("activate key %q version %d: it is %s, not created: %w", key, a.Version, state, rekey.ErrStale)
	}
	var active int
	var kBackend, kRef string
	if err := tx.QueryRowContext(ctx, `SELECT active_version, backend, backend_ref FROM keys WHERE name = ?`, key).Scan(&active, &kBackend, &kRef); err != nil {
		return err
	}
	if active != a.Previous {
		return fmt.Errorf("activate key %q: active version is %d, not %d: %w", key, active, a.Previous, rekey.ErrStale)
	}
	at := micros(r.UpdatedAt)
	if vBackend != "" && (vBackend != kBackend || vRef != kRef) {
		// A move: the key follows its active version to the new backend.
		// Versions that name no backend were on the key's old one; they
		// say so before the key's changes.
		if _, err := tx.ExecContext(ctx, `UPDATE key_versions SET backend = ?, backend_ref = ? WHERE key = ? AND backend = ''`,
			kBackend, kRef, key); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET backend = ?, backend_ref = ? WHERE name = ?`, vBackend, vRef, key); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE keys SET active_version = ?, expires_at = ?, updated_at = ? WHERE name = ?`,
		a.Version, micros(a.ExpiresAt), at, key); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE key_versions SET state = 'active', activated_at = ?, expires_at = ? WHERE key = ? AND version = ?`,
		at, micros(a.ExpiresAt), key, a.Version); err != nil {
		return err
	}
	if a.Previous != a.Version {
		if _, err := tx.ExecContext(ctx, `UPDATE key_versions SET state = 'pending_retirement', retire_after = ?
			WHERE key = ? AND version = ? AND state = 'active'`, micros(a.RetireAfter), key, a.Previous); err != nil {
			return err
		}
	}
	return nil
}

// GetRotation implements rekey.Store.
func (s *Store) GetRotation(ctx context.Context, id string) (rekey.Rotation, error) {
	r, err := scanRotation(s.r.QueryRowContext(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return rekey.Rotation{}, s.fail("get rotation", fmt.Errorf("rotation %s: %w", id, rekey.ErrRotationNotFound))
	}
	if err != nil {
		return rekey.Rotation{}, s.fail("get rotation", err)
	}
	return r, nil
}

// OpenRotation implements rekey.Store.
func (s *Store) OpenRotation(ctx context.Context, key string) (rekey.Rotation, error) {
	r, err := scanRotation(s.r.QueryRowContext(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE key = ? AND state <> 'done'`, key))
	if errors.Is(err, sql.ErrNoRows) {
		return rekey.Rotation{}, s.fail("open rotation", fmt.Errorf("open rotation of key %q: %w", key, rekey.ErrRotationNotFound))
	}
	if err != nil {
		return rekey.Rotation{}, s.fail("open rotation", err)
	}
	return r, nil
}

// ListRotations implements rekey.Store. Rotations started at the same time
// are ordered by id, newest first.
func (s *Store) ListRotations(ctx context.Context, q rekey.RotationQuery) ([]rekey.Rotation, error) {
	const op = "list rotations"
	limit := storecheck.RotationLimit(q.Limit)
	var where []string
	var args []any
	if q.Key != "" {
		where, args = append(where, `key = ?`), append(args, q.Key)
	}
	if q.OpenOnly {
		where = append(where, `state <> 'done'`)
	}
	if !q.Since.IsZero() {
		where, args = append(where, `started_at >= ?`), append(args, micros(q.Since))
	}
	query := `SELECT ` + rotationColumns + ` FROM rotations`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, ` AND `)
	}
	query += ` ORDER BY started_at DESC, id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	var out []rekey.Rotation
	for rows.Next() {
		r, err := scanRotation(rows)
		if err != nil {
			return nil, s.fail(op, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}
