package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

const rotationColumns = `id, key, from_version, to_version, state, reason, note, compromised,
	deks_total, deks_done, deks_failed, cursor, failed_deks, started_at, updated_at, finished_at,
	owner, epoch, last_error, to_backend`

func scanRotation(sc scanner) (rekey.Rotation, error) {
	var r rekey.Rotation
	var state, reason string
	var started, updated, finished *time.Time
	err := sc.Scan(&r.ID, &r.Key, &r.FromVersion, &r.ToVersion, &state, &reason, &r.Note, &r.Compromised,
		&r.Total, &r.Done, &r.Failed, &r.Cursor, &r.FailedDEKs, &started, &updated, &finished,
		&r.Owner, &r.Epoch, &r.LastError, &r.ToBackend)
	if err != nil {
		return rekey.Rotation{}, err
	}
	r.State, r.Reason = rekey.RotationState(state), rekey.RotationReason(reason)
	if len(r.FailedDEKs) == 0 {
		r.FailedDEKs = nil
	}
	r.StartedAt, r.UpdatedAt, r.FinishedAt = fromTS(started), fromTS(updated), fromTS(finished)
	return r, nil
}

// failedArg is the failed_deks column value: an array, or NULL when empty.
func failedArg(ids []string) any {
	if len(ids) == 0 {
		return nil
	}
	return ids
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
	return s.write(ctx, op, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM keys WHERE name = $1`, r.Key).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("key %q: %w", r.Key, rekey.ErrKeyNotFound)
		}
		if err != nil {
			return err
		}
		if err := checkFence(ctx, tx, r.Key, fence); err != nil {
			return err
		}
		// ON CONFLICT DO NOTHING rather than a unique violation: an error
		// would abort the transaction, and the conflict is an answer.
		tag, err := tx.Exec(ctx, `INSERT INTO rotations (`+rotationColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
			ON CONFLICT DO NOTHING`,
			r.ID, r.Key, r.FromVersion, r.ToVersion, string(r.State), string(r.Reason), r.Note, r.Compromised,
			r.Total, r.Done, r.Failed, r.Cursor, failedArg(r.FailedDEKs), ts(r.StartedAt), ts(r.UpdatedAt), ts(r.FinishedAt),
			r.Owner, r.Epoch, r.LastError, r.ToBackend)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("rotation %s of key %q: the key has an open rotation or the id is taken: %w", r.ID, r.Key, rekey.ErrConflict)
		}
		return appendEvents(ctx, tx, evs)
	})
}

// AdvanceRotation implements rekey.Store, as sqlitestore does. The
// rotation row is read FOR UPDATE, so two updates of one rotation
// serialise and the second sees the first's state.
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
	return s.write(ctx, op, func(tx pgx.Tx) error {
		p, err := planAdvance(ctx, tx, u, fence, now)
		if err != nil {
			return err
		}
		return applyAdvance(ctx, tx, p, evs)
	})
}

// advancePlan is a rotation update that passed its guards, with the
// rotation's next values merged, ready for applyAdvance in the same
// transaction.
type advancePlan struct {
	u    rekey.RotationUpdate
	cur  rekey.Rotation
	next rekey.Rotation
	now  time.Time
}

// planAdvance locks and reads the rotation u names in tx and checks the
// guards of AdvanceRotation, fence before state. It writes nothing.
func planAdvance(ctx context.Context, tx pgx.Tx, u rekey.RotationUpdate, fence rekey.Lease, now time.Time) (advancePlan, error) {
	cur, err := scanRotation(tx.QueryRow(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE id = $1 FOR UPDATE`, u.Rotation.ID))
	if errors.Is(err, pgx.ErrNoRows) {
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
func applyAdvance(ctx context.Context, tx pgx.Tx, p advancePlan, evs []rekey.AuditEvent) error {
	key, next := p.cur.Key, p.next
	if p.u.NewVersion != nil {
		nv, err := storecheck.PrepareNewVersion(*p.u.NewVersion, key, p.now)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO key_versions (`+versionColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
			ON CONFLICT (key, version) DO NOTHING`,
			nv.Key, nv.Version, string(nv.State), ts(nv.CreatedAt), ts(nv.ActivatedAt), ts(nv.ExpiresAt),
			ts(nv.RetireAfter), ts(nv.RetiredAt), ts(nv.DestroyedAt), nv.Backend, nv.BackendRef, nv.BackendVersion)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("key %q version %d exists: %w", key, nv.Version, rekey.ErrConflict)
		}
	}
	if p.u.Activate != nil {
		if err := activate(ctx, tx, key, *p.u.Activate, next); err != nil {
			return err
		}
	}
	_, err := tx.Exec(ctx, `UPDATE rotations SET to_version = $1, state = $2, note = $3, compromised = $4,
		deks_total = $5, deks_done = $6, deks_failed = $7, cursor = $8, failed_deks = $9, updated_at = $10,
		finished_at = $11, owner = $12, epoch = $13, last_error = $14 WHERE id = $15`,
		next.ToVersion, string(next.State), next.Note, next.Compromised,
		next.Total, next.Done, next.Failed, next.Cursor, failedArg(next.FailedDEKs), ts(next.UpdatedAt),
		ts(next.FinishedAt), next.Owner, next.Epoch, next.LastError, next.ID)
	if err != nil {
		return err
	}
	return appendEvents(ctx, tx, evs)
}

// activate commits a rotation: the key's active version and expiry, the
// new version active with that expiry, the previous one pending retirement
// unless it is no longer active. It locks the key row, then the version
// row, FOR UPDATE (the order InsertDEKs takes them in).
func activate(ctx context.Context, tx pgx.Tx, key string, a rekey.Activation, r rekey.Rotation) error {
	var active int
	var kBackend, kRef string
	if err := tx.QueryRow(ctx, `SELECT active_version, backend, backend_ref FROM keys WHERE name = $1 FOR UPDATE`, key).Scan(&active, &kBackend, &kRef); err != nil {
		return err
	}
	var state, vBackend, vRef string
	err := tx.QueryRow(ctx, `SELECT state, backend, backend_ref FROM key_versions WHERE key = $1 AND version = $2 FOR UPDATE`, key, a.Version).Scan(&state, &vBackend, &vRef)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("activate key %q version %d: %w", key, a.Version, rekey.ErrVersionNotFound)
	}
	if err != nil {
		return err
	}
	if rekey.VersionState(state) != rekey.VersionCreated {
		return fmt.Errorf("activate key %q version %d: it is %s, not created: %w", key, a.Version, state, rekey.ErrStale)
	}
	if active != a.Previous {
		return fmt.Errorf("activate key %q: active version is %d, not %d: %w", key, active, a.Previous, rekey.ErrStale)
	}
	at := ts(r.UpdatedAt)
	if vBackend != "" && (vBackend != kBackend || vRef != kRef) {
		// A move: the key follows its active version to the new backend.
		// Versions that name no backend were on the key's old one; they
		// say so before the key's changes.
		if _, err := tx.Exec(ctx, `UPDATE key_versions SET backend = $1, backend_ref = $2 WHERE key = $3 AND backend = ''`,
			kBackend, kRef, key); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE keys SET backend = $1, backend_ref = $2 WHERE name = $3`, vBackend, vRef, key); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE keys SET active_version = $1, expires_at = $2, updated_at = $3 WHERE name = $4`,
		a.Version, ts(a.ExpiresAt), at, key); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE key_versions SET state = 'active', activated_at = $1, expires_at = $2 WHERE key = $3 AND version = $4`,
		at, ts(a.ExpiresAt), key, a.Version); err != nil {
		return err
	}
	if a.Previous != a.Version {
		if _, err := tx.Exec(ctx, `UPDATE key_versions SET state = 'pending_retirement', retire_after = $1
			WHERE key = $2 AND version = $3 AND state = 'active'`, ts(a.RetireAfter), key, a.Previous); err != nil {
			return err
		}
	}
	return nil
}

// GetRotation implements rekey.Store.
func (s *Store) GetRotation(ctx context.Context, id string) (rekey.Rotation, error) {
	if s.closed.Load() {
		return rekey.Rotation{}, errClosed
	}
	r, err := scanRotation(s.pool.QueryRow(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return rekey.Rotation{}, s.fail("get rotation", fmt.Errorf("rotation %s: %w", id, rekey.ErrRotationNotFound))
	}
	if err != nil {
		return rekey.Rotation{}, s.fail("get rotation", err)
	}
	return r, nil
}

// OpenRotation implements rekey.Store.
func (s *Store) OpenRotation(ctx context.Context, key string) (rekey.Rotation, error) {
	if s.closed.Load() {
		return rekey.Rotation{}, errClosed
	}
	r, err := scanRotation(s.pool.QueryRow(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE key = $1 AND state <> 'done'`, key))
	if errors.Is(err, pgx.ErrNoRows) {
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
	if s.closed.Load() {
		return nil, errClosed
	}
	var where []string
	var args []any
	if q.Key != "" {
		args = append(args, q.Key)
		where = append(where, `key = $`+strconv.Itoa(len(args)))
	}
	if q.OpenOnly {
		where = append(where, `state <> 'done'`)
	}
	if !q.Since.IsZero() {
		args = append(args, ts(q.Since))
		where = append(where, `started_at >= $`+strconv.Itoa(len(args)))
	}
	query := `SELECT ` + rotationColumns + ` FROM rotations`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, ` AND `)
	}
	args = append(args, storecheck.RotationLimit(q.Limit))
	query += ` ORDER BY started_at DESC, id DESC LIMIT $` + strconv.Itoa(len(args))
	rows, err := s.pool.Query(ctx, query, args...)
	out, err := collect(rows, err, scanRotation)
	if err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}
