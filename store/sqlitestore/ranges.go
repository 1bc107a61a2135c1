package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/store/internal/storecheck"
)

var _ rekey.RangeSharer = (*Store)(nil)

// boundsSQL is DEKBounds in one statement: a keyset walk, each step
// skipping every-1 DEKs from the previous bound and taking the next,
// through the (key, id) index, or with byID through the table's primary
// key (as ListDEKs: see mostlyOf). BenchmarkDEKBounds compares it with the
// other ways (boundsWindowSQL, boundsWalkSQL); the figures are quoted
// there.
func boundsSQL(byID bool) string {
	key, dkey := `key = ?1`, `d.key = ?1`
	if byID {
		key, dkey = `+key = ?1`, `+d.key = ?1`
	}
	return `WITH RECURSIVE b(id) AS (
		SELECT (SELECT id FROM deks WHERE ` + key + ` AND version <> ?2 ORDER BY id LIMIT 1 OFFSET ?3)
		UNION ALL
		SELECT (SELECT d.id FROM deks d WHERE ` + dkey + ` AND d.version <> ?2 AND d.id > b.id ORDER BY d.id LIMIT 1 OFFSET ?3)
		FROM b WHERE b.id IS NOT NULL
	) SELECT id FROM b WHERE id IS NOT NULL`
}

// boundsWindowSQL and boundsWalkSQL are the other ways to compute
// DEKBounds, kept for the benchmark: one window query (row_number() over
// the ids, every every-th kept); one query per bound from Go.
const (
	boundsWindowSQL = `SELECT id FROM (
		SELECT id, row_number() OVER (ORDER BY id) AS rn FROM deks WHERE key = ? AND version <> ?
	) WHERE rn % ? = 0 ORDER BY id`
	boundsWalkSQL = `SELECT id FROM deks WHERE key = ? AND version <> ? AND id > ? ORDER BY id LIMIT 1 OFFSET ?`
)

// DEKBounds implements rekey.RangeSharer with boundsSQL.
func (s *Store) DEKBounds(ctx context.Context, key string, notVersion int, every int) ([]string, error) {
	const op = "dek bounds"
	if err := storecheck.ValidateEvery(key, every); err != nil {
		return nil, s.fail(op, err)
	}
	byID, err := s.mostlyOf(ctx, key)
	if err != nil {
		return nil, s.fail(op, err)
	}
	out, err := queryIDs(ctx, s.r, boundsSQL(byID), key, notVersion, every-1)
	if err != nil {
		return nil, s.fail(op, err)
	}
	return out, nil
}

// queryIDs runs query and returns the one text column of its rows.
func queryIDs(ctx context.Context, q querier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// dekBoundsWindow is DEKBounds with boundsWindowSQL (for the benchmark).
func (s *Store) dekBoundsWindow(ctx context.Context, key string, notVersion int, every int) ([]string, error) {
	return queryIDs(ctx, s.r, boundsWindowSQL, key, notVersion, every)
}

// dekBoundsIndex is DEKBounds through the (key, id) index whatever the
// key's share (for the benchmark).
func (s *Store) dekBoundsIndex(ctx context.Context, key string, notVersion int, every int) ([]string, error) {
	return queryIDs(ctx, s.r, boundsSQL(false), key, notVersion, every-1)
}

// dekBoundsWalk is DEKBounds with boundsWalkSQL (for the benchmark).
func (s *Store) dekBoundsWalk(ctx context.Context, key string, notVersion int, every int) ([]string, error) {
	var out []string
	after := ""
	for {
		var id string
		err := s.r.QueryRowContext(ctx, boundsWalkSQL, key, notVersion, after, every-1).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return out, nil
		}
		if err != nil {
			return nil, s.fail("dek bounds", err)
		}
		out = append(out, id)
		after = id
	}
}

// readRotationState reads the key and state of rotation id in tx, or
// ErrRotationNotFound.
func readRotationState(ctx context.Context, tx *sql.Tx, id string) (key string, state rekey.RotationState, err error) {
	err = tx.QueryRowContext(ctx, `SELECT key, state FROM rotations WHERE id = ?`, id).Scan(&key, &state)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", fmt.Errorf("rotation %s: %w", id, rekey.ErrRotationNotFound)
	}
	return key, state, err
}

// SplitRewrap implements rekey.RangeSharer: in one write transaction, the
// rotation, the fence on its key, its state, no range yet, then one
// prepared INSERT per range and the events.
func (s *Store) SplitRewrap(ctx context.Context, rotationID string, bounds []string, fence rekey.Lease, events ...rekey.AuditEvent) error {
	const op = "split rewrap"
	if err := storecheck.ValidateBounds(rotationID, bounds); err != nil {
		return s.fail(op, err)
	}
	evs, err := storecheck.PrepareEvents(events, s.nowTime())
	if err != nil {
		return s.fail(op, err)
	}
	lo, hi := storecheck.RangeBounds(bounds)
	return s.write(ctx, op, func(tx *sql.Tx) error {
		key, state, err := readRotationState(ctx, tx, rotationID)
		if err != nil {
			return err
		}
		if err := checkFence(ctx, tx, key, fence); err != nil {
			return err
		}
		if state != rekey.RotationRewrapping {
			return fmt.Errorf("split of rotation %s of key %q: it is %s, not rewrapping: %w", rotationID, key, state, rekey.ErrStale)
		}
		var split bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM rewrap_ranges WHERE rotation_id = ?)`, rotationID).Scan(&split); err != nil {
			return err
		}
		if split {
			return fmt.Errorf("split of rotation %s of key %q: it was split already (list its ranges): %w", rotationID, key, rekey.ErrConflict)
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO rewrap_ranges (rotation_id, idx, key, lo, hi) VALUES (?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i := range lo {
			if _, err := stmt.ExecContext(ctx, rotationID, i, key, lo[i], hi[i]); err != nil {
				return err
			}
		}
		return appendEvents(ctx, tx, evs)
	})
}

const rangeColumns = `rotation_id, key, idx, lo, hi, cursor, deks_done, deks_failed, finished`

func scanRange(sc scanner) (rekey.RewrapRange, error) {
	var r rekey.RewrapRange
	err := sc.Scan(&r.RotationID, &r.Key, &r.Index, &r.From, &r.To, &r.Cursor, &r.Done, &r.Failed, &r.Finished)
	return r, err
}

// ListRewrapRanges implements rekey.RangeSharer.
func (s *Store) ListRewrapRanges(ctx context.Context, rotationID string) ([]rekey.RewrapRange, error) {
	const op = "list rewrap ranges"
	rows, err := s.r.QueryContext(ctx, `SELECT `+rangeColumns+` FROM rewrap_ranges WHERE rotation_id = ? ORDER BY idx`, rotationID)
	if err != nil {
		return nil, s.fail(op, err)
	}
	defer rows.Close()
	var out []rekey.RewrapRange
	for rows.Next() {
		r, err := scanRange(rows)
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

// CommitRangeBatch implements rekey.RangeSharer in one write transaction
// (SQLite has one writer at a time, so nothing else changes the rows
// between its reads and its writes): the rotation (ErrRotationNotFound),
// the fence on the range's lease (ErrFenced), the rotation's state and the
// range (ErrStale), the versions the swaps name (ErrVersionNotFound), the
// swaps (one prepared statement, as SwapDEKs), the counters of the range
// and of the rotation as increments in SQL, and the events.
func (s *Store) CommitRangeBatch(ctx context.Context, swaps []rekey.DEKSwap, fence rekey.Lease, cp rekey.RangeCheckpoint) ([]string, error) {
	const op = "commit range batch"
	if err := storecheck.ValidateSwaps(swaps); err != nil {
		return nil, s.fail(op, err)
	}
	if err := storecheck.ValidateRangeCheckpoint(cp); err != nil {
		return nil, s.fail(op, err)
	}
	now := s.nowTime()
	evs, err := storecheck.PrepareEvents(cp.Events, now)
	if err != nil {
		return nil, s.fail(op, err)
	}
	var lost []string
	err = s.writeOn(ctx, op, func(tx *sql.Tx, conn *sql.Conn) error {
		key, state, err := readRotationState(ctx, tx, cp.RotationID)
		if err != nil {
			return err
		}
		lk := rekey.RangeLeaseKey(cp.RotationID, cp.Index)
		if err := checkFence(ctx, tx, lk, fence); err != nil {
			return err
		}
		// A range lease fences by expiry too (see rekey.RangeCheckpoint.Now).
		if row, _, err := readLease(ctx, tx, lk); err != nil {
			return err
		} else if row.expires <= cp.Now.UnixMicro() {
			return fmt.Errorf("range lease %q owner %s epoch %d expired at %s: %w", lk, fence.Owner, fence.Epoch,
				time.UnixMicro(row.expires).UTC().Format(time.RFC3339), rekey.ErrFenced)
		}
		if state != rekey.RotationRewrapping {
			return fmt.Errorf("rotation %s of key %q is %s, not rewrapping: %w", cp.RotationID, key, state, rekey.ErrStale)
		}
		var lo, hi string
		var finished bool
		err = tx.QueryRowContext(ctx, `SELECT lo, hi, finished FROM rewrap_ranges WHERE rotation_id = ? AND idx = ?`,
			cp.RotationID, cp.Index).Scan(&lo, &hi, &finished)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("rotation %s of key %q has no range %d (was it split?): %w", cp.RotationID, key, cp.Index, rekey.ErrStale)
		}
		if err != nil {
			return err
		}
		if finished {
			return fmt.Errorf("range %d of rotation %s of key %q is finished: %w", cp.Index, cp.RotationID, key, rekey.ErrStale)
		}
		if len(swaps) > 0 {
			if err := checkVersionsExist(ctx, tx, key, swaps); err != nil {
				return err
			}
			// Only the ids of the range, (lo, hi] (an empty hi is no
			// upper bound), in SQLite's order of text (bytes).
			inRange := func(id string) bool { return id > lo && (hi == "" || id <= hi) }
			if lost, err = swapRows(ctx, tx, conn, swaps, key, now, inRange); err != nil {
				return err
			}
		}
		applied := len(swaps) - len(lost)
		done, failed := cp.Done+int64(applied), int64(len(cp.FailedIDs))
		if _, err := tx.ExecContext(ctx, `UPDATE rewrap_ranges SET cursor = ?, deks_done = deks_done + ?, deks_failed = deks_failed + ?,
			finished = ? WHERE rotation_id = ? AND idx = ?`,
			cp.Cursor, done, failed, cp.Finished, cp.RotationID, cp.Index); err != nil {
			return err
		}
		if err := addFailedDEKs(ctx, tx, cp.RotationID, cp.FailedIDs); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE rotations SET deks_done = deks_done + ?, deks_failed = deks_failed + ?, updated_at = ?
			WHERE id = ?`, done, failed, micros(now), cp.RotationID); err != nil {
			return err
		}
		return appendEvents(ctx, tx, storecheck.AddEventDEKs(evs, applied))
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// addFailedDEKs appends ids to the failed_deks of rotation id while it
// holds fewer than storecheck.MaxFailedDEKs, in tx. The column is a JSON
// array read and written in the one write transaction.
func addFailedDEKs(ctx context.Context, tx *sql.Tx, id string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	var cur sql.NullString
	if err := tx.QueryRowContext(ctx, `SELECT failed_deks FROM rotations WHERE id = ?`, id).Scan(&cur); err != nil {
		return err
	}
	var have []string
	if cur.Valid && cur.String != "" {
		if err := json.Unmarshal([]byte(cur.String), &have); err != nil {
			return fmt.Errorf("rotation %s: failed_deks: %w", id, err)
		}
	}
	if len(have) >= storecheck.MaxFailedDEKs {
		return nil
	}
	next, err := failedJSON(storecheck.AppendFailed(have, ids))
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE rotations SET failed_deks = ? WHERE id = ?`, next, id)
	return err
}
